#!/bin/sh
# Kernel helper written by hpcbinder for the {{engine}} image {{image}}.
# Jupyter runs it as `kernel-helper.sh {connection_file}`: it loads the site's modules and
# starts the kernel inside the image, with the connection file's directory bound in.
{{modules}}
connection_file="$1"
runtime_dir=$(dirname "$connection_file")
USER="${USER:-$(id -un)}"
export USER
{{exports}}
{{exec}}
