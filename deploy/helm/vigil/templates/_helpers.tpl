{{/* Names ------------------------------------------------------------------------- */}}

{{- define "vigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vigil.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", e.g. vigil-command-api. Call with (dict "root" $ "component" "relay"). */}}
{{- define "vigil.componentName" -}}
{{- printf "%s-%s" (include "vigil.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vigil.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vigil.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vigil.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------ */}}

{{- define "vigil.labels" -}}
helm.sh/chart: {{ include "vigil.chart" . }}
{{ include "vigil.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vigil
{{- end }}

{{- define "vigil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vigil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Call with (dict "root" $ "component" "command-api"). */}}
{{- define "vigil.componentLabels" -}}
{{ include "vigil.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vigil.componentSelectorLabels" -}}
{{ include "vigil.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image and checks ---------------------------------------------------------------- */}}

{{- define "vigil.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Fails the render on values that cannot work. Included by the ConfigMap. */}}
{{- define "vigil.validate" -}}
{{- $_ := required "secrets.existingSecret is required: the Secret with VIGIL_DATABASE_URL, VIGIL_JWT_KEYS, VIGIL_AUDIT_MAC_KEY, ... (deploy/README.md)" .Values.secrets.existingSecret }}
{{- $_ := required "kafka.bootstrap is required (MSK bootstrap brokers, host:port,...)" .Values.kafka.bootstrap }}
{{- if and .Values.workers.enabled (gt (int .Values.workers.replicas) (int .Values.kafka.topicPartitions)) }}
{{- fail (printf "workers.replicas (%d) exceeds kafka.topicPartitions (%d): the extra consumers would sit idle" (int .Values.workers.replicas) (int .Values.kafka.topicPartitions)) }}
{{- end }}
{{- if and (has .Values.database.sslMode (list "verify-ca" "verify-full")) (not .Values.database.caConfigMap.name) }}
{{- fail "database.sslMode verify-ca/verify-full needs database.caConfigMap.name (the RDS CA bundle)" }}
{{- end }}
{{- if and .Values.kafka.topics.create (eq (index .Values.config.extra "VIGIL_KAFKA_SASL_MECHANISM" | default "") "AWS_MSK_IAM") }}
{{- fail "kafka.topics.create needs SCRAM or PLAIN: the Kafka CLI image has no AWS IAM login module. With AWS_MSK_IAM set kafka.topics.create=false; the relay creates the topics, with the same replication settings" }}
{{- end }}
{{- if and .Values.migration.enabled (not .Values.migration.existingSecret) }}
{{- fail "migration.existingSecret is required: a Secret whose VIGIL_DATABASE_URL is the owning role's, for `vigil migrate` (or migration.enabled=false to let each process migrate as it starts)" }}
{{- end }}
{{- if and (eq .Values.config.env "production") (not .Values.signing.existingSecret) }}
{{- fail "signing.existingSecret is required in production: the Secret holding the Ed25519 key that signs checkpoints and exports (`vigil keys generate` makes signing-key.pem)" }}
{{- end }}
{{- if and (eq .Values.config.env "production") (not .Values.config.jwtKid) (not .Values.config.jwksUrl) }}
{{- fail "config.jwksUrl (your identity provider's JWKS) or config.jwtKid (the kid of VIGIL_JWT_KEYS that signs tokens) is required in production" }}
{{- end }}
{{- end }}

{{/* Checks of checkov (`make deploy-check`) that Vigil's workloads fail on purpose, each
     with its reason; checkov reads them from the object's annotations. */}}
{{- define "vigil.checkovSkips" -}}
checkov.io/skip1: "CKV_K8S_11=No CPU limit on purpose: CFS throttling stalls the event loop and the commit group; CPU requests size the pods and the HPAs scale them"
checkov.io/skip2: "CKV_K8S_35=Vigil reads its settings from the environment (pydantic-settings), the Secret through envFrom; values are SecretStr, never logged; the signing key is a mounted file"
{{- if not .Values.image.digest }}
checkov.io/skip3: "CKV_K8S_43=Deployed by tag, as outside production; values-production.yaml sets image.digest"
checkov.io/skip4: "CKV_K8S_15=Deployed by tag from a registry with immutable tags; values-production.yaml sets image.digest"
{{- end }}
{{- end }}

{{/* Pod parts shared by every Vigil Deployment ---------------------------------------- */}}

{{/* Pod template metadata annotations: roll the pods when the ConfigMap changes. */}}
{{- define "vigil.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Everything a Vigil container reads: the ConfigMap and the Secret. */}}
{{- define "vigil.envFrom" -}}
- configMapRef:
    name: {{ include "vigil.fullname" . }}
- secretRef:
    name: {{ .Values.secrets.existingSecret }}
{{- end }}

{{- define "vigil.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.signing.existingSecret }}
- name: signing
  mountPath: /etc/vigil/signing
  readOnly: true
{{- end }}
{{- if .Values.signing.publicKeysConfigMap }}
- name: signing-public
  mountPath: /etc/vigil/signing-public
  readOnly: true
{{- end }}
{{- if .Values.database.caConfigMap.name }}
- name: db-ca
  mountPath: /etc/vigil/db-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "vigil.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.signing.existingSecret }}
- name: signing
  secret:
    secretName: {{ .Values.signing.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.signing.key }}
        path: signing-key.pem
{{- end }}
{{- if .Values.signing.publicKeysConfigMap }}
- name: signing-public
  configMap:
    name: {{ .Values.signing.publicKeysConfigMap }}
{{- end }}
{{- if .Values.database.caConfigMap.name }}
- name: db-ca
  configMap:
    name: {{ .Values.database.caConfigMap.name }}
    items:
      - key: {{ .Values.database.caConfigMap.key }}
        path: ca.pem
{{- end }}
{{- end }}

{{/* Scheduling: call with (dict "root" $ "component" "relay"). */}}
{{- define "vigil.scheduling" -}}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vigil.componentSelectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vigil.componentSelectorLabels" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* The probes of an API container: startup and liveness on /health/live, readiness on
     /health/ready (503 while PostgreSQL does not answer; Redis down is still ready). */}}
{{- define "vigil.apiProbes" -}}
startupProbe:
  httpGet: {path: /health/live, port: http}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
livenessProbe:
  httpGet: {path: /health/live, port: http}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
readinessProbe:
  httpGet: {path: /health/ready, port: http}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
{{- end }}

{{/* The relay, the workers and the case opener answer /health/live and /health/ready
     beside /metrics on their metrics port (ready while PostgreSQL answers). A wedged event
     loop does not show here; the lag alerts (deploy/prometheus/rules.yaml) catch that. */}}
{{- define "vigil.metricsProbes" -}}
startupProbe:
  httpGet: {path: /health/live, port: metrics}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
livenessProbe:
  httpGet: {path: /health/live, port: metrics}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
readinessProbe:
  httpGet: {path: /health/ready, port: metrics}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
{{- end }}

{{/* The non-secret settings of every Vigil process: the release's ConfigMap, and the
     migration hook's own copy (a hook runs before the release's ConfigMap exists). */}}
{{- define "vigil.configData" -}}
# Non-secret settings for every Vigil process (infrastructure/settings.py). Secrets come
# from the Secret named by secrets.existingSecret.
{{- if .Values.migration.enabled }}
# `vigil migrate` (the pre-install/pre-upgrade Job) made the schema as the owning role:
# the services, as the least-privileged role, run no DDL.
VIGIL_MIGRATE_ON_START: "false"
{{- end }}
VIGIL_ENV: {{ .Values.config.env | quote }}
VIGIL_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
VIGIL_HOST: "0.0.0.0"
VIGIL_VAR_DIR: /tmp/vigil
VIGIL_COMMAND_PORT: {{ .Values.commandApi.port | quote }}
VIGIL_QUERY_PORT: {{ .Values.queryApi.port | quote }}
VIGIL_RELAY_METRICS_PORT: {{ .Values.relay.metricsPort | quote }}
VIGIL_WORKERS_METRICS_PORT: {{ .Values.workers.metricsPort | quote }}
VIGIL_CASE_OPENER_METRICS_PORT: {{ .Values.caseOpener.metricsPort | quote }}
VIGIL_KAFKA_BOOTSTRAP: {{ .Values.kafka.bootstrap | quote }}
{{- if .Values.signing.existingSecret }}
VIGIL_SIGNING_KEY_FILE: /etc/vigil/signing/signing-key.pem
{{- end }}
{{- if .Values.signing.publicKeysConfigMap }}
VIGIL_SIGNING_PUBLIC_KEYS_DIR: /etc/vigil/signing-public
{{- end }}
VIGIL_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
VIGIL_TOPIC_PARTITIONS: {{ .Values.kafka.topicPartitions | quote }}
VIGIL_TOPIC_REPLICATION_FACTOR: {{ .Values.kafka.topics.replicationFactor | quote }}
VIGIL_TOPIC_MIN_INSYNC_REPLICAS: {{ .Values.kafka.topics.minInsyncReplicas | quote }}
{{- with .Values.redis.url }}
VIGIL_REDIS_URL: {{ . | quote }}
{{- end }}
VIGIL_REDIS_KEY_PREFIX: {{ .Values.config.redisKeyPrefix | quote }}
{{- with .Values.config.jwtKid }}
VIGIL_JWT_KID: {{ . | quote }}
{{- end }}
{{- with .Values.config.jwksUrl }}
VIGIL_JWKS_URL: {{ . | quote }}
{{- end }}
{{- with .Values.config.jwtAlgorithms }}
VIGIL_JWT_ALGORITHMS: {{ toJson . | quote }}
{{- end }}
VIGIL_JWT_ISSUER: {{ .Values.config.jwtIssuer | quote }}
VIGIL_JWT_AUDIENCE: {{ .Values.config.jwtAudience | quote }}
VIGIL_JWT_LEEWAY_S: {{ .Values.config.jwtLeewayS | quote }}
VIGIL_DB_POOL_SIZE: {{ .Values.config.dbPoolSize | quote }}
VIGIL_AMOUNT_MAX: {{ .Values.config.amountMax | int64 | quote }}
VIGIL_OVERDRAFT_MAX: {{ .Values.config.overdraftMax | int64 | quote }}
VIGIL_TELLER_OVERDRAFT_MAX: {{ .Values.config.tellerOverdraftMax | int64 | quote }}
VIGIL_BALANCE_MAX: {{ .Values.config.balanceMax | int64 | quote }}
VIGIL_BODY_MAX_BYTES: {{ .Values.config.bodyMaxBytes | int64 | quote }}
{{- range $key, $value := .Values.config.extra }}
{{ $key }}: {{ $value | quote }}
{{- end }}
# libpq reads these for every PostgreSQL connection, the event store's pool included.
{{- with .Values.database.sslMode }}
PGSSLMODE: {{ . | quote }}
{{- end }}
{{- if .Values.database.caConfigMap.name }}
PGSSLROOTCERT: /etc/vigil/db-ca/ca.pem
{{- end }}
{{- end }}
