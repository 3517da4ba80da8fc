#!/bin/sh
# Prints a kustomization that deploys BASE (a directory, relative to where the kustomization is written)
# with the xds-operator image set to IMAGE: what `kustomize edit set image xds-operator=IMAGE` writes,
# without writing to a tracked file.
# IMAGE is NAME, NAME:TAG or NAME@DIGEST (NAME may hold a registry port: host:5000/team/xds-operator:v1).
# Used by `make deploy IMG=...`.
set -eu
if [ $# -ne 2 ] || [ -z "$1" ]; then
	echo "usage: $0 IMAGE BASE_DIRECTORY" >&2
	exit 2
fi
image=$1
base=$2
case $image in
*@*)
	name=${image%%@*}
	reference="digest: ${image#*@}"
	;;
*)
	case ${image##*/} in # a colon after the last slash starts the tag; one before it is a registry port
	*:*)
		name=${image%:*}
		reference="newTag: ${image##*:}"
		;;
	*)
		name=$image
		reference="newTag: latest"
		;;
	esac
	;;
esac
cat <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- $base
images:
- name: xds-operator
  newName: $name
  $reference
KUSTOMIZATION
