#!/bin/sh
# Kernel helper written by hpcbinder for the environment {{prefix_comment}}.
# Jupyter runs this with the kernel's command as arguments: it loads the site's modules,
# activates the environment, runs the repository's `start` script if it has one, and
# execs the kernel.
{{modules}}
hpcbinder_prefix={{prefix}}
PATH="$hpcbinder_prefix/bin:${PATH}"
export PATH
{{activate}}
if [ -d "$hpcbinder_prefix/etc/conda/activate.d" ]; then
    for script in "$hpcbinder_prefix"/etc/conda/activate.d/*.sh; do
        [ -r "$script" ] && . "$script"
    done
fi
if [ -x "$hpcbinder_prefix/hpcbinder/start" ]; then
    exec "$hpcbinder_prefix/hpcbinder/start" "$@"
fi
exec "$@"
