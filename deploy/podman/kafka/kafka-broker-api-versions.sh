#!/bin/sh
# apache/kafka's script of this name, which compose's healthcheck runs: the API versions of
# every broker, or a non-zero exit when none answers. A small, quick JVM: it runs every 10 s.
exec java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*' \
  org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
