#!/bin/sh
# Kernel helper written by hpcbinder for the environment {{prefix}}.
# Jupyter runs this with the kernel's command as arguments: it loads the site's modules,
# activates the environment, runs the repository's `start` script if it has one, and
# execs the kernel.
{{modules}}
PATH="{{prefix}}/bin:${PATH}"
export PATH
{{activate}}
if [ -d "{{prefix}}/etc/conda/activate.d" ]; then
    for script in "{{prefix}}"/etc/conda/activate.d/*.sh; do
        [ -r "$script" ] && . "$script"
    done
fi
if [ -x "{{prefix}}/hpcbinder/start" ]; then
    exec "{{prefix}}/hpcbinder/start" "$@"
fi
exec "$@"
