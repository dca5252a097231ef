"""The ``theranode`` command line and its views of the node's state."""
