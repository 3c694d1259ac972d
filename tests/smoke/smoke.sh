#!/usr/bin/env bash
# The chart on a real cluster, end to end: `make smoke` (a kind cluster from `make cluster`), or
# any cluster your kubeconfig reaches:
#   KUBE_CONTEXT=my-cluster KIND_CLUSTER= tests/smoke/smoke.sh      # images must be pullable there
#   tests/smoke/smoke.sh --demo     # steps 1-4 only, the release left installed (make cluster-demo)
#
# Steps (each printed with its duration; a failure names its step, exits 1 and saves events, pod
# logs, descriptions and `kind export logs` under $ARTIFACTS):
#   1 images     load the project's images and a test Redis into the nodes (kind only; the
#                training image to the GPU node only, in the background until step 6)
#   2 namespace  a namespace enforcing Pod Security "restricted"; the Prometheus Operator CRDs;
#                Redis and a small web site for the scraper
#   3 install    helm install with values-staging.yaml + the smoke overlays: every Deployment
#                Available, `helm test` passes
#   4 pipeline   scrape -> label -> record_disk_usage submitted from inside a worker pod, each
#                SUCCESS; the exporter's /metrics shows the queues and task counters
#   5 scale      kubectl scale the preview worker to 3: three Ready pods, all answering
#                `celery inspect active_queues`
#   6 prod       helm upgrade to values-prod.yaml (+ values-smoke-prod.yaml) on a node made to look
#                like a GPU node: the pre-flight check names missing PriorityClasses first; then the
#                training pod lands on the GPU node and trains a tiny LoRA on the CPU, no other
#                group lands there, and beat never has two pods during the upgrade
#   7 rollback   helm rollback to staging: the staging set of Deployments again; helm uninstall:
#                nothing left but the data claim the chart keeps
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL=${KUBECTL:-kubectl} HELM=${HELM:-helm} DOCKER=${DOCKER:-docker} KIND=${KIND:-kind}
KUBE_CONTEXT=${KUBE_CONTEXT:-$($KUBECTL config current-context)}
KIND_CLUSTER=${KIND_CLUSTER-imagineer}
IMAGE_TAG=${IMAGE_TAG:?IMAGE_TAG (the chart appVersion) is required}
BASE_IMAGE=${BASE_IMAGE:-imagineer/base-python:bookworm}
CRDS_DIR=${CRDS_DIR:-.tools/crds}
ARTIFACTS=${ARTIFACTS:-tests/smoke/artifacts}
NS=${SMOKE_NAMESPACE:-imagineer-smoke}
RELEASE=imagineer-workers
CHART=charts/imagineer-workers
DEMO=false
[ "${1:-}" = --demo ] && DEMO=true

STAGING=(-f values-staging.yaml -f tests/smoke/values-smoke.yaml -f tests/smoke/values-smoke-staging.yaml)
PROD=(-f values-prod.yaml -f tests/smoke/values-smoke.yaml -f tests/smoke/values-smoke-prod.yaml)
REDIS_IMAGE=imagineer/smoke-redis:bookworm
LIGHT_IMAGES=(imagineer/worker-default imagineer/worker-scraping imagineer/worker-labeling
              imagineer/celery-exporter imagineer/flower)
STATE=$(mktemp -d /tmp/imagineer-smoke.XXXXXX)
trap 'rm -rf "$STATE"' EXIT

k() { "$KUBECTL" --context "$KUBE_CONTEXT" -n "$NS" "$@"; }
kc() { "$KUBECTL" --context "$KUBE_CONTEXT" "$@"; }
h() { "$HELM" --kube-context "$KUBE_CONTEXT" -n "$NS" "$@"; }
log() { echo "   $*"; }
fail() { echo "   FAIL: $*" >&2; return 1; }

# Poll until a command succeeds: wait_for SECONDS DESCRIPTION CMD...
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what: not after ${timeout}s"
    sleep 1
  done
}

# `kubectl wait --for=condition=Established` errors out on a CRD that has no conditions yet.
established() {
  [ "$(kc get crd "$1" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]
}
deployments() { k get deploy -l "app.kubernetes.io/instance=$RELEASE" -o name | sort; }
all_available() {
  local d
  for d in $(deployments); do
    k rollout status "$d" --timeout=300s >/dev/null || { k get "$d" -o wide >&2; fail "$d is not Available"; }
  done
}
# The worker Deployment of a group (component label = group name).
worker_of() { k get deploy -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=$1" -o name; }
# `imagineer-workers submit … --wait` inside a pod of deployment $1; prints the task's result
# (a JSON object after the line with the task id).
submit() {
  local deploy=$1; shift
  k exec "$deploy" -c worker -- imagineer-workers submit "$@" --wait --timeout 300
}
# One field of a result printed by submit: field RESULT KEY.
field() {
  python3 -c 'import json, sys; text = sys.stdin.read(); print(json.loads(text[text.index("\n"):])[sys.argv[1]])' "$2" <<<"$1"
}
# What active_queues must print for the running (not terminating) pods of these groups: each
# worker is <group>@<pod> and consumes the queues of its rendered `-Q` argument.
expected_queues() {
  local group
  for group in "$@"; do
    k get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=$group" -o json |
      python3 -c 'import json, sys
for pod in json.load(sys.stdin)["items"]:
    if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
        args = pod["spec"]["containers"][0]["args"]
        queues = args[args.index("-Q") + 1].split(",")
        print(sys.argv[1] + "@" + pod["metadata"]["name"], ",".join(sorted(queues)))' "$group"
  done | sort
}
# The queues each worker consumes, as "<hostname> <queue,queue>" lines, from a worker's `inspect`.
active_queues() {
  k exec "$1" -c worker -- celery -A imagineer_worker.celery_app inspect active_queues --json --timeout 5 2>/dev/null |
    tail -1 | python3 -c 'import json, sys
for host, queues in sorted(json.load(sys.stdin).items()):
    print(host, ",".join(sorted(q["name"] for q in queues)))'
}

gpu_node() { kc get nodes -l nvidia.com/gpu.present=true -o jsonpath='{.items[0].metadata.name}'; }
has_gpu() { [ "$(kc get node "$1" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" -ge 1 ]; }

# ---- steps -------------------------------------------------------------------------------------
step_images() {
  if [ -z "$KIND_CLUSTER" ]; then log "not a kind cluster: the images must be pullable by the nodes"; return; fi
  "$DOCKER" build -q --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$REDIS_IMAGE" \
    -f tests/smoke/redis.Dockerfile tests/smoke >/dev/null
  local images=("$REDIS_IMAGE") i
  for i in "${LIGHT_IMAGES[@]}"; do images+=("$i:$IMAGE_TAG"); done
  "$KIND" load docker-image --name "$KIND_CLUSTER" "${images[@]}"
  # The 5 GB training image only on the GPU node, and in the background: step 6 waits for it.
  $DEMO && return
  local node
  node=$(gpu_node)
  [ -n "$node" ] || fail "no node labelled nvidia.com/gpu.present=true (cluster/kind-config.yaml has one)"
  # (errexit is on in here: the exit status is caught explicitly so that step 6 always learns it)
  ( rc=0; "$KIND" load docker-image --name "$KIND_CLUSTER" --nodes "$node" "imagineer/worker-training:$IMAGE_TAG" \
      > "$STATE/training-load.log" 2>&1 || rc=$?; echo $rc > "$STATE/training-load.rc" ) &
}

step_namespace() {
  # A clean start: a namespace left by an interrupted run goes first (the cluster itself is kept).
  if kc get namespace "$NS" >/dev/null 2>&1; then
    log "deleting the namespace left by an earlier run"
    h uninstall "$RELEASE" --wait >/dev/null 2>&1 || true
    kc delete namespace "$NS" --wait --timeout=180s >/dev/null
  fi
  kc create namespace "$NS" >/dev/null
  kc label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest pod-security.kubernetes.io/warn=restricted >/dev/null
  # ServiceMonitor, PrometheusRule, … (the chart's monitoring objects), generated by `make tools`.
  local crd files=()
  for crd in "$CRDS_DIR"/monitoring.coreos.com_*.yaml; do files+=(-f "$crd"); done
  kc apply --server-side "${files[@]}" >/dev/null
  wait_for 60 "the ServiceMonitor CRD established" established servicemonitors.monitoring.coreos.com
  wait_for 60 "the PrometheusRule CRD established" established prometheusrules.monitoring.coreos.com
  # values-staging.yaml enables Flower with this Secret; values-prod.yaml names these two.
  k create secret generic imagineer-flower-auth --from-literal=basic-auth=admin:smoke-secret \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  sed "s/@IMAGE_TAG@/$IMAGE_TAG/" tests/smoke/manifests.yaml | k apply -f - >/dev/null
  k rollout status deploy/redis --timeout=180s >/dev/null
  k rollout status deploy/fixture-site --timeout=180s >/dev/null
}

step_install() {
  h install "$RELEASE" "$CHART" "${STAGING[@]}" --wait --timeout 5m >/dev/null
  all_available
  deployments | sed 's/^/   /'
  h test "$RELEASE" --timeout 2m >/dev/null || { h test "$RELEASE" --logs || true; fail "helm test"; }
  log "helm test passed"
  # doctor in the staging pod on a fresh install: green (no training queue expected there, beat's
  # first 12-hour sample not due yet).
  local preview doctor=""
  preview=$(worker_of preview)
  for _ in $(seq 30); do
    doctor=$(k exec "$preview" -c worker -- imagineer-workers doctor 2>&1) && break
    sleep 2
  done
  grep -q "^PEND  beat: record_disk_usage" <<<"$doctor" && ! grep -q "queue training" <<<"$doctor" ||
    { echo "$doctor" >&2; fail "doctor is not green on the fresh staging install"; }
  log "$(tail -1 <<<"$doctor"), beat pending"
}

step_pipeline() {
  local preview out
  preview=$(worker_of preview)
  # The fixture site's gallery: 4 distinct images, a duplicate and a text file (skipped).
  out=$(submit "$preview" scraping.scrape_dataset \
    --kwargs '{"dataset_id": "smoke", "page_url": "http://fixture-site:8080/gallery.html"}')
  [ "$(field "$out" images)" = 4 ] || { echo "$out" >&2; fail "scrape: expected 4 images"; }
  log "scrape: 4 images"
  out=$(submit "$preview" labeling.label_dataset \
    --kwargs '{"dataset_id": "smoke", "batch_size": 2, "default_caption": "a square"}')
  [ "$(field "$out" labeled)" = 4 ] || { echo "$out" >&2; fail "label: expected 4 labeled"; }
  log "label: 4 labeled"
  out=$(submit "$preview" maintenance.record_disk_usage)
  [ "$(field "$out" data_dir)" = /data ] || { echo "$out" >&2; fail "record_disk_usage: not on the data volume"; }
  log "record_disk_usage: sampled /data"
  # The exporter, through the API server's service proxy: queue gauges and task counters.
  local svc metrics
  svc=$(k get svc -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=exporter" -o jsonpath='{.items[0].metadata.name}')
  for _ in $(seq 60); do
    metrics=$(kc get --raw "/api/v1/namespaces/$NS/services/$svc:metrics/proxy/metrics" 2>/dev/null || true)
    grep -q 'celery_task_succeeded_total{.*scrape_dataset' <<<"$metrics" &&
      grep -q 'celery_queue_length{.*queue_name="scraping"' <<<"$metrics" && break
    sleep 2
  done
  grep -q 'celery_task_succeeded_total{.*scrape_dataset' <<<"$metrics" || fail "exporter: no succeeded counter for scrape_dataset"
  grep -q 'celery_queue_length{.*queue_name="scraping"' <<<"$metrics" || fail "exporter: no queue length for scraping"
  log "exporter: $(grep -c '^celery_queue_length{' <<<"$metrics") queue gauges, task counters present"
}

step_scale() {
  local preview
  preview=$(worker_of preview)
  k scale "$preview" --replicas=3 >/dev/null
  k rollout status "$preview" --timeout=300s >/dev/null
  local ready
  ready=$(k get "$preview" -o jsonpath='{.status.readyReplicas}')
  [ "$ready" = 3 ] || fail "$preview: $ready ready replicas, expected 3"
  # Every pod's worker answers (hostname preview@<pod>), consuming exactly the staging queues.
  local want="" got=""
  for _ in $(seq 30); do
    want=$(expected_queues preview)
    got=$(active_queues "$preview")
    [ "$got" = "$want" ] && [ "$(wc -l <<<"$got")" = 3 ] && break
    sleep 2
  done
  [ "$got" = "$want" ] || { printf 'inspect active_queues:\n%s\nexpected:\n%s\n' "$got" "$want" >&2; fail "the 3 preview workers do not all answer"; }
  log "3 Ready pods, all listed by celery inspect active_queues on default,labeling,scraping"
}


step_prod() {
  local node
  node=$(gpu_node)
  [ -n "$node" ] || fail "no node labelled nvidia.com/gpu.present=true (cluster/kind-config.yaml has one)"
  if [ -n "$KIND_CLUSTER" ]; then
    # The kind node as the device plugin would show a GPU node: nvidia.com/gpu in its capacity
    # (a real cluster's GPU node has it already and is left alone).
    kc patch node "$node" --subresource=status --type=json \
      -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"}]' >/dev/null
    wait_for 600 "the training image loaded on $node" test -f "$STATE/training-load.rc"
    [ "$(cat "$STATE/training-load.rc")" = 0 ] || { cat "$STATE/training-load.log" >&2; fail "loading the training image"; }
  fi
  wait_for 30 "nvidia.com/gpu allocatable on $node" has_gpu "$node"
  # What an operator creates before installing values-prod.yaml (the chart README's list).
  k create secret generic imagineer-redis --from-literal=broker-url=redis://redis:6379/0 \
    --from-literal=result-backend-url=redis://redis:6379/0 --dry-run=client -o yaml | k apply -f - >/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=smoke-ca -keyout "$STATE/ca.key" -out "$STATE/ca.crt" 2>/dev/null
  k create secret generic imagineer-redis-ca --from-file=ca.crt="$STATE/ca.crt" --dry-run=client -o yaml | k apply -f - >/dev/null

  # Without the PriorityClasses, the pre-flight check refuses within seconds, naming them: a
  # fresh install (a server-side dry run, which reads the cluster too) and this upgrade alike.
  local start=$SECONDS out attempt
  for attempt in "install prod-preflight --dry-run=server" "upgrade $RELEASE --wait --timeout 2m"; do
    # shellcheck disable=SC2086 # the attempt is words on purpose
    if out=$(h ${attempt%% *} ${attempt#* } "$CHART" "${PROD[@]}" 2>&1); then
      fail "helm ${attempt%% *} without the PriorityClasses succeeded"
    fi
    grep -q "PriorityClass imagineer-critical" <<<"$out" && grep -q "PriorityClass imagineer-training" <<<"$out" ||
      { echo "$out" >&2; fail "the refusal of helm ${attempt%% *} does not name both PriorityClasses"; }
  done
  log "install and upgrade refused in $((SECONDS - start)) s, naming:"
  grep -o 'PriorityClass imagineer-[a-z]* ([^)]*)' <<<"$out" | sed 's/^/     /'

  # Beat must never have two pods while the upgrade rolls (Recreate + one replica).
  local beat_sel="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=beat"
  ( while :; do k get pods -l "$beat_sel" --no-headers 2>/dev/null | wc -l; sleep 0.5; done ) > "$STATE/beat-counts" &
  local watcher=$!
  h upgrade "$RELEASE" "$CHART" "${PROD[@]}" --set priorityClasses.create=true --wait --timeout 10m >/dev/null ||
    { kill $watcher; fail "helm upgrade to values-prod.yaml"; }
  kill $watcher
  local most
  most=$(sort -n "$STATE/beat-counts" | tail -1)
  [ "$most" -le 1 ] || fail "beat had $most pods at once during the upgrade"
  log "beat: at most $most pod during the upgrade ($(wc -l < "$STATE/beat-counts") samples)"
  all_available

  # Placement: training on the GPU node; nothing else of the release there.
  local training placed others
  training=$(worker_of training)
  placed=$(k get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=training" \
    -o jsonpath='{.items[*].spec.nodeName}')
  [ "$placed" = "$node" ] || fail "training pod on '$placed', expected $node"
  others=$(k get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component!=training" \
    --field-selector "spec.nodeName=$node" -o name)
  [ -z "$others" ] || fail "other groups on the GPU node: $others"
  log "training on $node; no other group there"

  # values-prod.yaml's PodDisruptionBudgets select their groups' pods (2 expected, 1 disruption
  # allowed each) and its NetworkPolicies exist; kind's CNI does not enforce them (cluster/README.md).
  local budgets="" policies
  for _ in $(seq 30); do   # the disruption controller updates the status shortly after the pods
    budgets=$(k get pdb -l "app.kubernetes.io/instance=$RELEASE" \
      -o jsonpath='{range .items[*]}{.metadata.labels.app\.kubernetes\.io/component}={.status.expectedPods}/{.status.disruptionsAllowed} {end}')
    [ "$budgets" = "default=2/1 labeling=2/1 scraping=2/1 " ] && break
    sleep 2
  done
  [ "$budgets" = "default=2/1 labeling=2/1 scraping=2/1 " ] || fail "PodDisruptionBudgets: '$budgets', expected default, labeling, scraping at 2 pods / 1 disruption"
  policies=$(k get networkpolicy -l "app.kubernetes.io/instance=$RELEASE" -o name | wc -l)
  [ "$policies" = 7 ] || fail "$policies NetworkPolicies, expected 7 (4 groups, beat, exporter, helm test pod)"
  log "budgets $budgets; $policies NetworkPolicies (not enforced by this cluster's CNI)"

  # Each group's every replica answers and consumes exactly its own queue.
  local want="" got=""
  for _ in $(seq 30); do
    want=$(expected_queues default labeling scraping training)
    got=$(active_queues "$(worker_of default)")
    [ "$got" = "$want" ] && break
    sleep 2
  done
  [ "$got" = "$want" ] || { printf 'inspect active_queues:\n%s\nexpected:\n%s\n' "$got" "$want" >&2; fail "not every prod worker consumes exactly its queue"; }
  awk '{ split($1, host, "@"); if (host[1] != $2) bad = 1 } END { exit bad }' <<<"$got" ||
    { echo "$got" >&2; fail "a prod group consumes another queue than its own"; }
  log "$(wc -l <<<"$want" | tr -d ' ') prod workers, each on exactly its group's queue"

  # A few steps of the tiny LoRA on the CPU, from the data labeled in step 4.
  k exec "$training" -c worker -- python -m imagineer_worker.training.tiny /data/models/tiny-sd \
    >"$STATE/tiny.log" 2>&1 || { cat "$STATE/tiny.log" >&2; fail "building the tiny model in the training pod"; }
  out=$(submit "$training" training.train_lora --kwargs '{"job_id": "smoke-lora", "base_model": "/data/models/tiny-sd",
    "manifest": "labels/smoke/manifest.json", "steps": 4, "resolution": 64, "checkpoint_every": 2}')
  [ "$(field "$out" steps)" = 4 ] || { echo "$out" >&2; fail "train_lora: expected 4 steps"; }
  local weights
  weights=$(field "$out" weights)
  k exec "$training" -c worker -- test -s "/data/$weights" || fail "train_lora: no weights at /data/$weights"
  log "train_lora: 4 steps on $(field "$out" device), weights in /data/$weights"
}

step_rollback() {
  h rollback "$RELEASE" 1 --wait --timeout 5m >/dev/null
  all_available
  local now want
  now=$(deployments | tr '\n' ' ')
  want=$(h get manifest "$RELEASE" | grep -A3 '^kind: Deployment' | sed -n 's/^  name: //p' | sort | sed 's|^|deployment.apps/|' | tr '\n' ' ')
  [ "$now" = "$want" ] || fail "after rollback: $now; expected the staging set $want"
  grep -q preview <<<"$now" && ! grep -q training <<<"$now" || fail "after rollback: $now is not the staging set"
  log "staging set again: $now"
  h uninstall "$RELEASE" --wait --timeout 3m >/dev/null
  # Idle workers end their warm shutdown within seconds of SIGTERM.
  k wait --for=delete pod -l "app.kubernetes.io/instance=$RELEASE" --timeout=180s >/dev/null
  local left
  left=$(k get all,configmap,secret,pvc,serviceaccount,servicemonitor,prometheusrule,networkpolicy,pdb \
    -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null | sort | tr '\n' ' ')
  [ "$left" = "persistentvolumeclaim/$RELEASE-data " ] || fail "left after uninstall: '$left' (expected only the data claim)"
  log "uninstalled; kept: $left"
}

# ---- runner ------------------------------------------------------------------------------------
collect_artifacts() {
  mkdir -p "$ARTIFACTS"
  kc get events -A --sort-by=.lastTimestamp > "$ARTIFACTS/events.txt" 2>&1 || true
  kc get all,pvc,pv,nodes -A -o wide > "$ARTIFACTS/objects.txt" 2>&1 || true
  k describe pods > "$ARTIFACTS/pods-describe.txt" 2>&1 || true
  local p
  for p in $(k get pods -o name 2>/dev/null); do
    k logs "$p" --all-containers --prefix --tail=500 > "$ARTIFACTS/logs-${p#pod/}.txt" 2>&1 || true
  done
  [ -z "$KIND_CLUSTER" ] || "$KIND" export logs --name "$KIND_CLUSTER" "$ARTIFACTS/kind" >/dev/null 2>&1 || true
  echo "artifacts: $ARTIFACTS" >&2
}

TABLE=()
run_step() {
  local name=$1 fn=$2 start=$SECONDS rc=0
  echo "== $name"
  set +e
  ( set -e; "$fn" )
  rc=$?
  set -e
  TABLE+=("$(printf '%-10s %5ss  %s' "$name" $((SECONDS - start)) "$([ $rc = 0 ] && echo ok || echo FAILED)")")
  if [ $rc != 0 ]; then
    collect_artifacts
    printf '%s\n' "${TABLE[@]}"
    echo "smoke: FAILED at step '$name'" >&2
    exit 1
  fi
}

echo "smoke: context $KUBE_CONTEXT, namespace $NS, images tag $IMAGE_TAG"
run_step images step_images
run_step namespace step_namespace
run_step install step_install
run_step pipeline step_pipeline
if $DEMO; then
  printf '%s\n' "${TABLE[@]}"
  cat <<EOF
The release is up. Next:
  $KUBECTL --context $KUBE_CONTEXT -n $NS get pods
  $KUBECTL --context $KUBE_CONTEXT -n $NS scale $(worker_of preview) --replicas=2
  $KUBECTL --context $KUBE_CONTEXT -n $NS exec $(worker_of preview) -c worker -- imagineer-workers doctor
  $HELM --kube-context $KUBE_CONTEXT -n $NS uninstall $RELEASE      # make cluster-delete removes the cluster
EOF
  exit 0
fi
run_step scale step_scale
run_step prod step_prod
run_step rollback step_rollback
k delete -f <(sed "s/@IMAGE_TAG@/$IMAGE_TAG/" tests/smoke/manifests.yaml) --wait=false >/dev/null 2>&1 || true
kc delete namespace "$NS" --wait=false >/dev/null
printf '%s\n' "${TABLE[@]}"
echo "smoke: every step passed in ${SECONDS}s"
