# Mosquitto for the provisioning bridge: Debian's mosquitto 2.0 with its dynamic-security
# plugin. The configuration, password file, ACL and dynamic-security file are not in the
# image: `bridge broker-files` writes them into the volume mounted at /broker (the compose
# file's `broker-init` one-shot), from the shipped mosquitto.conf and mosquitto.acl.
# The TLS listener reads /tls/server.crt and /tls/server.key (mount your own; the key must
# be readable by uid 10002).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A fixed uid for the broker's user, created before the package does it with a random one,
# so that `broker-files --owner 10002:10002` and the key's owner can name it. Debian 12's
# packages are the pin (DL3008).
# hadolint ignore=DL3008
RUN groupadd --system --gid 10002 mosquitto \
 && useradd --system --uid 10002 --gid 10002 --home-dir /broker --no-create-home \
        --shell /usr/sbin/nologin mosquitto \
 && apt-get update \
 && apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/* \
 && plugin="$(dpkg -L mosquitto | grep '/mosquitto_dynamic_security\.so$')" \
 && test -f "$plugin" \
 && mkdir -p /usr/lib/mosquitto /broker \
 && ln -s "$plugin" /usr/lib/mosquitto/mosquitto_dynamic_security.so \
 && chown 10002:10002 /broker
# The plugin stays where Debian puts it (/usr/lib/<multiarch>/); the link gives it one
# name on every architecture, which `broker-files --plugin` writes into mosquitto.conf.
USER 10002:10002
# mosquitto.conf names its files relative to the working directory.
WORKDIR /broker
EXPOSE 1883 8883
CMD ["/usr/sbin/mosquitto", "-c", "/broker/mosquitto.conf"]
