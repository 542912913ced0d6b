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
# In use while this kernel runs: a shared lock on the marker, held by the kernel (it
# inherits descriptor 9), which `hpcbinder rm` and `gc` test before removing anything
# (a lock every node of a shared filesystem sees; atime is useless on noatime mounts).
if command -v flock >/dev/null 2>&1; then
    if ! { exec 9<"$hpcbinder_prefix.toml"; } 2>/dev/null || ! flock -s -w 30 9; then
        echo "hpcbinder: $hpcbinder_prefix is gone or being removed; rebuild it with hpcbinder build" >&2
        exit 1
    fi
fi
# When it was last used, per user, for `hpcbinder gc --older-than`.
touch "${hpcbinder_prefix%/e/*}/used/${hpcbinder_prefix##*/}.$(id -u)" 2>/dev/null || :
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
