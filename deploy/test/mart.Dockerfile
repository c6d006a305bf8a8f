# The mart for `make deploy-check`: the host's release binary (built with --static-swift-stdlib,
# as the production Dockerfile's builder stage builds it) on the locally built Debian base, with
# librdkafka 2.16 from PyPI's confluent-kafka wheel: Debian 12's librdkafka 2.0.2 cannot read the
# test broker's (Tansu's) ApiVersions reply. Production (deploy/Dockerfile) uses Debian's
# librdkafka against Apache Kafka. Built by scripts/deploy-check.sh from a staged context.
FROM mart-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 mart \
 && install -d -o mart -g mart /var/lib/mart/mail
COPY librdkafka/ /opt/librdkafka/
COPY mart /usr/local/bin/mart
COPY gateway.json /etc/mart/gateway.json
ENV LD_LIBRARY_PATH=/opt/librdkafka MART_GATEWAY_CONFIG=/etc/mart/gateway.json
USER mart
ENV MART_BIND_HOST=0.0.0.0
ENTRYPOINT ["/usr/local/bin/mart"]
CMD ["--help"]
