#!/usr/bin/env bash
# Pier on a real multi-node cluster: builds the image, creates a kind cluster (1 control plane,
# 2 workers), loads the image, installs charts/pier, and replays the lesson with Pods as targets:
#
#   1. two Pods on one Network ping each other by name (Pier's DNS on the gateway);
#   2. a PortPublish answers on the node's address, from the node and from another node;
#   3. Networks are isolated: a Pod on another Network reaches neither the address nor the name;
#   4. connecting that Pod to the first Network (a second Endpoint) makes both reachable;
#   5. an overlay Network spans both workers: Pods on different workers ping each other by name
#      and talk HTTP, a PortPublish answers on its worker's address, and deleting the Endpoints
#      leaves no FDB or neighbour entry for them on either worker;
#   6. Pods by annotation (examples/pods/): a Deployment of two replicas sharing the alias web is
#      rolled out only once attached (readiness gate), a client Pod resolves web to both replicas'
#      net1 addresses and reaches each by name while its eth0 keeps the default route, the
#      annotation connects and disconnects, a bad one is reported, and deleting a Pod deletes its
#      Endpoints.
#
# Needs docker, kind, kubectl and helm on PATH; not part of .ci/run (CI has no Docker).
# Usage: tests/kind/run.sh            (KEEP=1 keeps the cluster afterwards; CLUSTER=name)
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-pier}"
IMAGE="${IMAGE:-pier:e2e}"
NS=pier-system
HERE=tests/kind

missing=()
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tests/kind/run.sh needs ${missing[*]} on PATH (and a running Docker daemon); nothing was run." >&2
  echo "  kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "tests/kind/run.sh: the Docker daemon is not reachable (docker info failed); nothing was run." >&2
  exit 2
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# retry N CMD...: runs CMD until it succeeds, at most N times, a second apart.
retry() {
  local n=$1; shift
  for _ in $(seq "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}

step "building $IMAGE"
docker build -t "$IMAGE" --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" .

step "creating kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --wait 120s
fi
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER" >/dev/null
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "installing charts/pier"
helm upgrade --install pier charts/pier --namespace "$NS" --create-namespace \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --wait --timeout 5m
kubectl -n "$NS" rollout status deployment/pier-operator --timeout=3m
kubectl -n "$NS" rollout status daemonset/pier-node --timeout=3m
retry 60 kubectl get network bridge || fail "the operator did not create the default networks"
kubectl get networks

step "applying the lesson"
NODE="$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].metadata.name}')"
OTHER="$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[1].metadata.name}')"
echo "targets on $NODE, remote client on $OTHER"
kubectl delete pod,endpoint.pier.dev,portpublish.pier.dev -l app=pier-e2e --ignore-not-found >/dev/null
kubectl apply -f "$HERE/manifests/1-networks.yaml"
sed "s/NODE/$NODE/" "$HERE/manifests/2-pods.yaml" | kubectl apply -f -
kubectl wait --for=condition=Ready pod/con1 pod/con2 pod/con3 --timeout=3m
kubectl apply -f "$HERE/manifests/3-endpoints.yaml"
kubectl wait --for=condition=Ready endpoint.pier.dev/con1 endpoint.pier.dev/con2 endpoint.pier.dev/con3 --timeout=2m
kubectl wait --for=condition=Ready portpublish.pier.dev/con1-web --timeout=2m
kubectl get pier -o wide

ip_of() { kubectl get endpoint.pier.dev "$1" -o jsonpath='{.status.ipv4Address}'; }
CON1_IP="$(ip_of con1)"
[ -n "$CON1_IP" ] || fail "con1 has no address in status"

step "1. con2 pings con1 by name on workshop-tage"
retry 20 kubectl exec con2 -- ping -c1 -W2 con1 || fail "con2 cannot ping con1 by name"
kubectl exec con2 -- ping -c1 -W2 con1.workshop-tage >/dev/null || fail "NAME.NETWORK does not resolve"
echo ok

step "2. the PortPublish answers on the node's address"
NODE_IP="$(kubectl get node "$NODE" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
retry 20 docker exec "$OTHER" curl -sf "http://$NODE_IP:8000/" || fail "$NODE_IP:8000 unreachable from $OTHER"
docker exec "$OTHER" curl -sf "http://$NODE_IP:8000/" | grep -q hello-from-con1 || fail "wrong answer on $NODE_IP:8000"
docker exec "$NODE" curl -sf "http://127.0.0.1:8000/" | grep -q hello-from-con1 || fail "127.0.0.1:8000 unreachable on $NODE"
kubectl get ppub con1-web
echo ok

step "3. networks are isolated: con3 (ch-open) reaches neither con1's address nor its name"
if kubectl exec con3 -- ping -c1 -W2 "$CON1_IP" >/dev/null 2>&1; then fail "con3 reached $CON1_IP across networks"; fi
if kubectl exec con3 -- nslookup con1 10.219.0.1 >/dev/null 2>&1; then fail "con3 resolved con1 across networks"; fi
echo ok

step "4. docker network connect workshop-tage con3"
kubectl apply -f "$HERE/manifests/4-connect.yaml"
kubectl wait --for=condition=Ready endpoint.pier.dev/con3-workshop-tage --timeout=2m
retry 20 kubectl exec con3 -- ping -c1 -W2 con1 || fail "con3 cannot ping con1 after the connect"
echo ok

step "disconnect: deleting the second Endpoint isolates con3 again"
kubectl delete -f "$HERE/manifests/4-connect.yaml" --wait
retry 20 sh -c "! kubectl exec con3 -- ping -c1 -W2 $CON1_IP" || fail "con3 still reaches con1 after the disconnect"
echo ok

step "5. overlay: one Network across both workers"
sed -e "s/WORKER1/$NODE/" -e "s/WORKER2/$OTHER/" "$HERE/manifests/5-overlay.yaml" | kubectl apply -f -
kubectl wait --for=condition=Ready pod/ov1 pod/ov2 --timeout=3m
kubectl wait --for=condition=Ready endpoint.pier.dev/ov1 endpoint.pier.dev/ov2 --timeout=2m
kubectl wait --for=condition=Ready portpublish.pier.dev/ov2-web --timeout=2m
kubectl get network ov-tage
[ "$(kubectl get network ov-tage -o jsonpath='{.status.scope}')" = cluster ] || fail "ov-tage's scope is not cluster"
VXLAN_ID="$(kubectl get network ov-tage -o jsonpath='{.status.vxlanId}')"
[ "${VXLAN_ID:-0}" -ge 4096 ] || fail "ov-tage has no VXLAN id from 4096 in status (got '$VXLAN_ID')"
[ -n "$(kubectl get network ov-tage -o jsonpath='{.status.mtu}')" ] || fail "ov-tage's status says no MTU"
for worker in "$NODE" "$OTHER"; do
  [ -n "$(kubectl get node "$worker" -o jsonpath='{.metadata.annotations.pier\.dev/tunnel-address}')" ] \
    || fail "$worker has no pier.dev/tunnel-address annotation"
done
[ "$(kubectl get endpoint.pier.dev ov1 -o jsonpath='{.status.node}')" = "$NODE" ] || fail "ov1 is not on $NODE"
[ "$(kubectl get endpoint.pier.dev ov2 -o jsonpath='{.status.node}')" = "$OTHER" ] || fail "ov2 is not on $OTHER"
retry 20 kubectl exec ov1 -- ping -c1 -W2 ov2 || fail "ov1 ($NODE) cannot ping ov2 ($OTHER) by name"
retry 20 kubectl exec ov2 -- ping -c1 -W2 ov1 || fail "ov2 ($OTHER) cannot ping ov1 ($NODE) by name"
kubectl exec ov1 -- wget -qO- http://ov2/ | grep -q hello-from-ov2 || fail "ov1 cannot fetch http://ov2/ across workers"
OTHER_IP="$(kubectl get node "$OTHER" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
retry 20 docker exec "$NODE" curl -sf "http://$OTHER_IP:8001/" || fail "$OTHER_IP:8001 unreachable from $NODE"
docker exec "$NODE" curl -sf "http://$OTHER_IP:8001/" | grep -q hello-from-ov2 || fail "wrong answer on $OTHER_IP:8001"
echo ok

step "5. overlay: deleting the Endpoints leaves no entries on either worker"
mac_of() { kubectl get endpoint.pier.dev "$1" -o jsonpath='{.status.macAddress}' | tr 'A-F' 'a-f'; }
OV_MACS="$(mac_of ov1) $(mac_of ov2)"
OV_IPS="$(ip_of ov1) $(ip_of ov2)"
kubectl delete portpublish.pier.dev ov2-web --wait
kubectl delete endpoint.pier.dev ov1 ov2 --wait
# entries_left WORKER: prints the FDB and neighbour entries still naming ov1 or ov2 on WORKER.
entries_left() {
  local worker=$1 mac ip
  for mac in $OV_MACS; do
    docker exec "$worker" bridge fdb show | grep -i -- "$mac" || true
  done
  for ip in $OV_IPS; do
    docker exec "$worker" ip -4 neigh show nud permanent | grep -w -F -- "$ip" || true
  done
}
no_entries_left() { [ -z "$(entries_left "$NODE")$(entries_left "$OTHER")" ]; }
if ! retry 20 no_entries_left; then
  entries_left "$NODE"
  entries_left "$OTHER"
  fail "FDB or neighbour entries of deleted Endpoints are left"
fi
kubectl delete -f "$HERE/manifests/5-overlay.yaml" --ignore-not-found --wait >/dev/null
echo ok

step "6. Pods by annotation: examples/pods (a Deployment of two replicas as web, a client Pod)"
PODS_EXAMPLE=examples/pods
kubectl delete -f "$PODS_EXAMPLE/" --ignore-not-found --cascade=foreground --wait >/dev/null
kubectl apply -f "$PODS_EXAMPLE/"
# The readiness gate pier.dev/attached: the rollout completes only once Pier attached every replica.
if ! kubectl rollout status deployment/web --timeout=3m; then
  kubectl get pods -l app=web -o wide
  kubectl get endpoint.pier.dev -l pier.dev/pod -o wide
  fail "the Deployment web did not become available (its Pods' pier.dev/attached condition?)"
fi
kubectl wait --for=condition=Ready pod/client --timeout=3m
kubectl get endpoint.pier.dev -l pier.dev/pod -o wide

# attached POD: the status of POD's condition pier.dev/attached.
attached() { kubectl get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="pier.dev/attached")].status}'; }
# pod_endpoint POD: checks the one Endpoint the operator made for POD (named POD-workshop-pods,
# labelled and owned by POD, interface net1, its address on POD's net1, POD's condition True)
# and prints its address.
pod_endpoint() {
  local pod=$1 ep="$1-workshop-pods" address
  [ "$(kubectl get endpoint.pier.dev -l "pier.dev/pod=$pod" -o jsonpath='{.items[*].metadata.name}')" = "$ep" ] \
    || fail "the Endpoints labelled pier.dev/pod=$pod are not exactly $ep"
  [ "$(kubectl get endpoint.pier.dev "$ep" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}')" = "Pod/$pod/true" ] \
    || fail "$ep is not owned by Pod $pod (controller: true)"
  [ "$(kubectl get endpoint.pier.dev "$ep" -o jsonpath='{.status.interface}')" = net1 ] || fail "$ep's interface is not net1"
  address="$(ip_of "$ep")"
  [ -n "$address" ] || fail "$ep has no address in status"
  grep -qF "inet $address/" <<<"$(kubectl exec "$pod" -- ip -4 addr show net1)" || fail "$pod's net1 does not carry $address"
  [ "$(attached "$pod")" = True ] || fail "$pod's condition pier.dev/attached is not True"
  echo "$address"
}
WEB_PODS=()
WEB_IPS=()
for pod in $(kubectl get pods -l app=web -o jsonpath='{.items[*].metadata.name}'); do
  address="$(pod_endpoint "$pod")"
  WEB_PODS+=("$pod")
  WEB_IPS+=("$address")
  echo "$pod: net1 $address on $(kubectl get pod "$pod" -o jsonpath='{.spec.nodeName}')"
done
[ "${#WEB_PODS[@]}" -eq 2 ] || fail "expected the 2 replicas of web, found ${#WEB_PODS[@]}"
pod_endpoint client >/dev/null
echo ok

step "6. the client reaches web (every replica) by name; its eth0 keeps the default route"
# resolves_to_all NAME ADDRESS...: the client's resolver answers every ADDRESS for NAME (busybox
# nslookup asks a dotless NAME under each search domain, so the cluster's ones say NXDOMAIN).
resolves_to_all() {
  local name=$1 answer address
  shift
  answer="$(kubectl exec client -- nslookup "$name" 2>&1)" || true
  for address in "$@"; do
    grep -qwF -- "$address" <<<"$answer" || return 1
  done
}
retry 20 resolves_to_all web "${WEB_IPS[@]}" || fail "web does not resolve to both replicas (${WEB_IPS[*]})"
retry 20 kubectl exec client -- ping -c1 -W2 web || fail "client cannot ping web"
ANSWER="$(kubectl exec client -- wget -qO- http://web/)" || fail "client cannot fetch http://web/"
grep -qxF -- "$ANSWER" <<<"$(printf '%s\n' "${WEB_PODS[@]}")" || fail "http://web/ answered '$ANSWER', not a replica of web"
for pod in "${WEB_PODS[@]}"; do
  [ "$(kubectl exec client -- wget -qO- "http://$pod/")" = "$pod" ] || fail "client cannot fetch http://$pod/ (the replica's own name)"
  kubectl exec client -- ping -c1 -W2 "$pod.workshop-pods" >/dev/null || fail "client cannot ping $pod.workshop-pods"
done
# Every other name is forwarded to the cluster's DNS.
KUBERNETES_IP="$(kubectl get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
retry 10 resolves_to_all kubernetes.default.svc.cluster.local "$KUBERNETES_IP" \
  || fail "Pier's DNS does not forward cluster names (kubernetes.default.svc.cluster.local)"
ROUTES="$(kubectl exec client -- ip route)"
echo "$ROUTES"
grep -q '^default .*dev eth0' <<<"$ROUTES" || fail "client's default route is not the cluster's eth0"
if grep -q '^default .*dev net' <<<"$ROUTES"; then fail "Pier took client's default route"; fi
SUBNET="$(kubectl get network workshop-pods -o jsonpath='{.status.subnet}')"
grep -q "^$SUBNET dev net1" <<<"$ROUTES" || fail "client has no route to $SUBNET on net1"
echo ok

step "6. connect and disconnect by editing the annotation"
# net5 yes|no: whether the client has (yes) or lacks (no) the interface net5; false when it
# cannot be asked.
net5() {
  local names
  names="$(kubectl exec client -- ls /sys/class/net)" || return 1
  if grep -qx net5 <<<"$names"; then [ "$1" = yes ]; else [ "$1" = no ]; fi
}
kubectl annotate --overwrite pod client 'pier.dev/networks=workshop-pods, bridge@net5'
retry 60 kubectl get endpoint.pier.dev client-bridge || fail "editing the annotation created no Endpoint client-bridge"
kubectl wait --for=condition=Attached endpoint.pier.dev/client-bridge --timeout=2m
[ "$(kubectl get endpoint.pier.dev client-bridge -o jsonpath='{.status.interface}')" = net5 ] || fail "client-bridge's interface is not net5"
retry 20 net5 yes || fail "client has no net5 after the connect"
grep -q '^default .*dev eth0' <<<"$(kubectl exec client -- ip route)" || fail "the connect moved client's default route"
kubectl annotate --overwrite pod client pier.dev/networks=workshop-pods
kubectl wait --for=delete endpoint.pier.dev/client-bridge --timeout=2m
retry 20 net5 no || fail "client still has net5 after the disconnect"
echo ok

step "6. a bad annotation is reported and changes nothing; deleting the Pod deletes its Endpoints"
kubectl annotate --overwrite pod client 'pier.dev/networks=[{"network": "workshop-pods", "alias": ["x"]}]'
invalid_annotation() {
  [ "$(kubectl get pod client -o jsonpath='{.status.conditions[?(@.type=="pier.dev/attached")].reason}')" = InvalidAnnotation ] \
    && [ -n "$(kubectl get events --field-selector involvedObject.name=client,reason=InvalidAnnotation -o name)" ]
}
retry 30 invalid_annotation || fail "a misspelt annotation gave no InvalidAnnotation condition and Event on client"
kubectl get endpoint.pier.dev client-workshop-pods >/dev/null || fail "a bad annotation deleted client-workshop-pods"
kubectl delete pod client --wait
no_endpoints_of() { [ -z "$(kubectl get endpoint.pier.dev -l "pier.dev/pod=$1" -o name)" ]; }
retry 60 no_endpoints_of client || fail "deleting the Pod client left its Endpoints"
kubectl delete -f "$PODS_EXAMPLE/" --ignore-not-found --cascade=foreground --wait >/dev/null
for pod in "${WEB_PODS[@]}"; do
  retry 60 no_endpoints_of "$pod" || fail "deleting the Deployment left the Endpoints of $pod"
done
echo ok

printf '\nall kind checks passed\n'
