{{/* The chart name, overridable. */}}
{{- define "pier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "pier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "pier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pier
{{- end -}}

{{/* Selector labels of one role ("operator" or "node"): call with (list . "operator"). */}}
{{- define "pier.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "pier.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The ServiceAccount of one role: call with (list . "operator"). */}}
{{- define "pier.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (default (include "pier.fullname" $root) $root.Values.serviceAccount.name) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The image reference. */}}
{{- define "pier.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Whether the admin ports get Services. */}}
{{- define "pier.metricsService" -}}
{{- if or .Values.metrics.service .Values.metrics.serviceMonitor.enabled -}}true{{- end -}}
{{- end -}}
