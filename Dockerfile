# theranode node image. Built elsewhere (no Docker engine on the dev machines):
#   docker build -t theranode .
#   docker run -p 11112:11112 -v theranode-data:/var/lib/theranode theranode
# The node and its health check read /etc/theranode.toml (the shipped defaults);
# mount your own file there to change settings:
#   docker run ... -v ./site.toml:/etc/theranode.toml:ro theranode
# Back up the whole volume: it holds the site secret that keys patient keys.
FROM python:3.11-slim

# dcmtk: echoscu for the health check, storescu and echoscu for operators.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/theranode
# Exact versions, checked by hash (requirements.lock; README "Dependencies").
COPY pyproject.toml README.md LICENSE requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY service ./service
COPY dosimetry ./dosimetry
COPY dicomio ./dicomio
COPY config ./config
COPY theranode ./theranode
RUN pip install --no-cache-dir --no-deps .
COPY config/theranode.toml /etc/theranode.toml

RUN useradd --system --create-home --home-dir /var/lib/theranode theranode \
    && chmod 0700 /var/lib/theranode
USER theranode
# The shipped config keeps its data in ./theranode-data, i.e. on this volume.
WORKDIR /var/lib/theranode
VOLUME ["/var/lib/theranode"]
EXPOSE 11112

# The health check is dcmtk's echoscu, run by `theranode health` with what it
# reads from the node's own configuration: the listener's port and AE title,
# and TLS with the node's key pair when the node serves TLS (a bare echoscu
# could not follow a changed port, AE title or TLS). It also opens the
# database read-only, and counts an A-ASSOCIATE-RJ (calling AE HEALTHCHECK not
# in an allow-list) or the prompt close of a host not in allowed_hosts as alive.
HEALTHCHECK --interval=60s --timeout=30s --start-period=20s \
    CMD theranode health --config /etc/theranode.toml --timeout 20

ENTRYPOINT ["theranode"]
CMD ["serve", "--config", "/etc/theranode.toml"]
