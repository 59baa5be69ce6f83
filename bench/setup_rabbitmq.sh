#!/usr/bin/env bash
# One-time setup of the local RabbitMQ for bench/run.py (run as root; idempotent).
#
#  - enables Web-STOMP (ws://127.0.0.1:15674/ws);
#  - keeps RabbitMQ's raw STOMP listener off port 61613, which stomp-chat uses
#    (it moves to 127.0.0.1:61623), and binds Web-STOMP to loopback only;
#  - raises RabbitMQ's open-files limit to 20000 so that 10,000 idle
#    WebSocket connections fit (Debian's default soft limit is 1024);
#  - restarts RabbitMQ through its init script when anything changed (the init
#    script starts it with start-stop-daemon, which keeps the raised limit;
#    `su rabbitmq` would reset the soft limit to 1024).
set -euo pipefail

CONF=/etc/rabbitmq/rabbitmq.conf
DEFAULTS=/etc/default/rabbitmq-server
changed=0

rabbitmq-plugins enable rabbitmq_web_stomp >/dev/null

add_conf() {
    local key=$1 value=$2
    if ! grep -q "^${key} *=" "$CONF" 2>/dev/null; then
        echo "${key} = ${value}" >>"$CONF"
        changed=1
    fi
}
add_conf stomp.listeners.tcp.1 127.0.0.1:61623
add_conf web_stomp.tcp.ip 127.0.0.1
add_conf web_stomp.tcp.port 15674

if ! grep -q '^ulimit -n' "$DEFAULTS" 2>/dev/null; then
    echo "ulimit -n $(ulimit -Hn)" >>"$DEFAULTS"
    changed=1
fi

pid=$(pgrep -x beam.smp | head -n 1 || true)
limit=0
if [ -n "$pid" ]; then
    limit=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")
fi
if [ "$changed" = 1 ] || [ -z "$pid" ] || [ "$limit" -lt 10200 ]; then
    echo "restarting RabbitMQ"
    if [ -n "$pid" ]; then
        timeout 60 rabbitmqctl stop >/dev/null 2>&1 || true
        for _ in $(seq 1 30); do pgrep -x beam.smp >/dev/null || break; sleep 1; done
    fi
    rm -f /var/run/rabbitmq/pid
    timeout 180 /etc/init.d/rabbitmq-server start
fi

pid=$(pgrep -x beam.smp | head -n 1)
echo "beam.smp pid $pid, open-files limit $(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")"
ss -ltnp | grep beam.smp || true
