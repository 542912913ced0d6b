#!/bin/sh
# Kernel helper written by hpcbinder for the environment {{prefix_comment}}.
# Jupyter runs this with the kernel's command as arguments: it loads the site's modules,
# activates the environment, runs the repository's `start` script if it has one, and
# execs the kernel.
{{modules}}
hpcbinder_prefix={{prefix}}
# Refuse an environment that anyone but its builder could have changed: every file owned
# by uid {{owner}} and writable by nobody else (as hpcbinder left it), marker included.
hpcbinder_changed=$(find "$hpcbinder_prefix" "$hpcbinder_prefix.toml" ! -type l \( ! -user {{owner}} -o -perm -g+w -o -perm -o+w \) -print 2>&1 | head -n 1)
if [ -n "$hpcbinder_changed" ]; then
    echo "hpcbinder: refusing to start $hpcbinder_prefix: $hpcbinder_changed is owned or writable by another user; rebuild it with hpcbinder build" >&2
    exit 1
fi
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
