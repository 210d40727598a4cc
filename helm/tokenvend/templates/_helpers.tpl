{{/* Chart name. */}}
{{- define "tokenvend.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "tokenvend.fullname" -}}
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

{{- define "tokenvend.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every resource (without a component). */}}
{{- define "tokenvend.labels" -}}
helm.sh/chart: {{ include "tokenvend.chart" . }}
app.kubernetes.io/name: {{ include "tokenvend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "tokenvend.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the server pods. The migration Job's pods carry component=migration, so
the Service, PDB, NetworkPolicy and ServiceMonitor never select them. */}}
{{- define "tokenvend.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenvend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "tokenvend.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenvend.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokenvend.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "tokenvend.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "tokenvend.imageTag" .) }}
{{- end }}

{{/* "true" when a database (PostgreSQL) is configured, "" for embedded SQLite. */}}
{{- define "tokenvend.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when any secret setting is given as a trial value (the chart renders a Secret). */}}
{{- define "tokenvend.hasTrialSecret" -}}
{{- if or .Values.database.url .Values.masterKeys.value .Values.bootstrapAdminKey.value }}true{{ end }}
{{- end }}

{{/* Where the secret files are mounted. The *_FILE variables point at these. */}}
{{- define "tokenvend.secretsDir" -}}/etc/tokenvend/secrets{{- end }}
{{- define "tokenvend.dataDir" -}}/var/lib/tokenvend{{- end }}

{{/*
The secret settings: one entry per setting that is configured, each with the Secret and key
it comes from, the mount directory and the *_FILE variable. Returned as YAML (fromYaml).
*/}}
{{- define "tokenvend.secretSettings" -}}
{{- $fullname := include "tokenvend.fullname" . }}
{{- $dir := include "tokenvend.secretsDir" . }}
settings:
{{- with .Values.database }}
{{- if or .url .existingSecret }}
  - name: database-url
    env: TOKENVEND_DATABASE_URL_FILE
    secret: {{ default $fullname .existingSecret | quote }}
    key: {{ ternary .existingSecretKey "database-url" (not (empty .existingSecret)) | quote }}
    dir: {{ printf "%s/database" $dir | quote }}
{{- end }}
{{- end }}
{{- with .Values.masterKeys }}
{{- if or .value .existingSecret }}
  - name: master-keys
    env: TOKENVEND_MASTER_KEYS_FILE
    secret: {{ default $fullname .existingSecret | quote }}
    key: {{ ternary .existingSecretKey "master-keys" (not (empty .existingSecret)) | quote }}
    dir: {{ printf "%s/master-keys" $dir | quote }}
{{- end }}
{{- end }}
{{- with .Values.bootstrapAdminKey }}
{{- if or .value .existingSecret }}
  - name: bootstrap-admin-key
    env: TOKENVEND_BOOTSTRAP_ADMIN_KEY_FILE
    secret: {{ default $fullname .existingSecret | quote }}
    key: {{ ternary .existingSecretKey "bootstrap-admin-key" (not (empty .existingSecret)) | quote }}
    dir: {{ printf "%s/bootstrap-admin-key" $dir | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that cannot be expressed in values.schema.json. Included by the Deployment, so a bad
combination fails `helm install/upgrade/template` with one clear message.
*/}}
{{- define "tokenvend.validate" -}}
{{- $db := include "tokenvend.hasDatabase" . }}
{{- if and (not $db) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d but no database is configured: embedded SQLite holds a lock file and runs as ONE replica only. Set database.existingSecret (or database.url for a trial) to a PostgreSQL URL, or replicaCount: 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and (not $db) .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs a database: embedded SQLite holds a lock file and runs as ONE replica only. Set database.existingSecret (or database.url for a trial) to a PostgreSQL URL, or autoscaling.enabled: false." }}
{{- end }}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "set database.url (trial) or database.existingSecret, not both" }}
{{- end }}
{{- if and .Values.masterKeys.value .Values.masterKeys.existingSecret }}
{{- fail "set masterKeys.value (trial) or masterKeys.existingSecret, not both" }}
{{- end }}
{{- if and .Values.bootstrapAdminKey.value .Values.bootstrapAdminKey.existingSecret }}
{{- fail "set bootstrapAdminKey.value (trial) or bootstrapAdminKey.existingSecret, not both" }}
{{- end }}
{{- if and $db (not (or .Values.masterKeys.value .Values.masterKeys.existingSecret)) }}
{{- fail "a database is configured but no master key ring: TOKENVEND_MASTER_KEYS is required with an external database. Set masterKeys.existingSecret (a Secret holding `id:<base64 of 32 bytes>`, see `tokenvend keygen`)." }}
{{- end }}
{{- if and .Values.bootstrapAdminKey.value (lt (len .Values.bootstrapAdminKey.value) 16) }}
{{- fail "bootstrapAdminKey.value must be at least 16 characters (`tokenvend keygen --api-key` prints one)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.tls.clientCA.existingSecret (not .Values.tls.enabled) }}
{{- fail "tls.clientCA.existingSecret needs tls.enabled: client certificates are verified on the TLS gRPC port" }}
{{- end }}
{{- if and (eq .Values.tls.clientAuth "required") (not .Values.tls.clientCA.existingSecret) }}
{{- fail "tls.clientAuth: required needs tls.clientCA.existingSecret (the CA client certificates are verified against)" }}
{{- end }}
{{- $shutdown := add .Values.shutdown.delaySeconds .Values.shutdown.timeoutSeconds }}
{{- if ge (int $shutdown) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "shutdown.delaySeconds + shutdown.timeoutSeconds (%d s) must be less than terminationGracePeriodSeconds (%d s), or the kubelet kills the pod before calls in flight finish" (int $shutdown) (int .Values.terminationGracePeriodSeconds)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu (utilisation is a percentage of the request)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Annotation values that change whenever the rendered ConfigMap or chart Secret changes. */}}
{{- define "tokenvend.configChecksum" -}}
{{- $cm := include (print .Template.BasePath "/configmap.yaml") . }}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . }}
{{- printf "%s\n---\n%s" $cm $secret | sha256sum }}
{{- end }}

{{/* The pod's volumes for the secret settings and TLS. */}}
{{- define "tokenvend.secretVolumes" -}}
{{- $s := include "tokenvend.secretSettings" . | fromYaml }}
{{- range $s.settings }}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 288 # 0440: readable by the pod's fsGroup (65532), never world-readable
    items:
      - key: {{ .key }}
        path: {{ .name }}
{{- end }}
{{- end }}

{{- define "tokenvend.secretVolumeMounts" -}}
{{- $s := include "tokenvend.secretSettings" . | fromYaml }}
{{- range $s.settings }}
- name: {{ .name }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "tokenvend.secretFileEnv" -}}
{{- $s := include "tokenvend.secretSettings" . | fromYaml }}
{{- range $s.settings }}
- name: {{ .env }}
  value: {{ printf "%s/%s" .dir .name | quote }}
{{- end }}
{{- end }}
