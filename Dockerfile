# theranode node image. Built elsewhere (no Docker engine on the dev machines):
#   docker build -t theranode .
#   docker run -p 11112:11112 -v theranode-data:/var/lib/theranode theranode
# Mount a config file and pass --config to change settings:
#   docker run ... -v ./site.toml:/etc/theranode.toml theranode serve --config /etc/theranode.toml
FROM python:3.11-slim

# dcmtk provides echoscu for the health check (and storescu for operators).
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/theranode
COPY pyproject.toml README.md ./
COPY service ./service
COPY dosimetry ./dosimetry
COPY dicomio ./dicomio
COPY config ./config
RUN pip install --no-cache-dir .

RUN useradd --system --create-home --home-dir /var/lib/theranode theranode
USER theranode
# The shipped config keeps its data in ./theranode-data, i.e. on this volume.
WORKDIR /var/lib/theranode
VOLUME ["/var/lib/theranode"]
EXPOSE 11112

HEALTHCHECK --interval=60s --timeout=10s --start-period=20s \
    CMD echoscu -aet HEALTHCHECK -aec THERANODE 127.0.0.1 11112 || exit 1

ENTRYPOINT ["theranode"]
CMD ["serve"]
