{{- define "aro.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aro.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "aro.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "aro.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "aro.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aro.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: assumed-role-operator
{{- end }}

{{- define "aro.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aro.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The rules the operator needs wherever it serves AssumedRoles. */}}
{{- define "aro.servingRules" -}}
- apiGroups: [sts.refresh.dev]
  resources: [assumedroles]
  verbs: [get, list, watch]
- apiGroups: [sts.refresh.dev]
  resources: [assumedroles/status]
  verbs: [patch]
# Server-side apply of a Secret that does not exist yet needs create too;
# delete removes the Secret an AssumedRole left behind when its
# spec.secret.name changed.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.clusterAssumedRoles.enabled }}
# ClusterAssumedRoles: the AssumedRoles each one keeps in the namespaces it
# selects.
- apiGroups: [sts.refresh.dev]
  resources: [assumedroles]
  verbs: [create, patch, delete]
{{- end }}
{{- if .Values.rollouts.enabled }}
# Rollouts for new credentials: workloads watched by metadata, and one pod
# template annotation patched.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, list, watch, patch]
{{- end }}
{{- if .Values.sources.serviceAccountTokens }}
# spec.source.serviceAccountName: a short-lived token of that ServiceAccount
# (TokenRequest). spec.source.secretRef reads Secrets with the rule above.
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
{{- end }}
{{- end }}

{{/* The operator's --sources, from the chart's sources values. */}}
{{- define "aro.sources" -}}
{{- $sources := list "Operator" -}}
{{- if .Values.sources.serviceAccountTokens }}{{ $sources = append $sources "ServiceAccount" }}{{ end -}}
{{- if .Values.sources.staticKeys }}{{ $sources = append $sources "Secret" }}{{ end -}}
{{- if .Values.sources.chaining }}{{ $sources = append $sources "AssumedRole" }}{{ end -}}
{{- join "," $sources -}}
{{- end }}

{{/* The DNS names of the webhook's Service, one per line as a YAML list. */}}
{{- define "aro.webhookNames" -}}
{{- $svc := printf "%s-webhook" (include "aro.fullname" .) -}}
- {{ $svc }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* Replicas: at least two while the webhook is on. */}}
{{- define "aro.replicas" -}}
{{- if .Values.webhook.enabled }}{{ max 2 (int .Values.replicaCount) }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}
