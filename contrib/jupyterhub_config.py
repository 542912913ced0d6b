# hpcbinder's launch service, `[serve] launch = "server"`: the spawner side.
#
# Add this to the site's jupyterhub_config.py (paste it, or `exec(open(path).read())`
# after `c = get_config()`), and set the two paths below. It works with any Spawner that
# starts `cmd` as the user with a working directory (LocalProcessSpawner, batchspawner's
# SlurmSpawner and friends, SSHSpawner): for a named server the service started with
# hpcbinder's `user_options`, the single-user server runs inside the built environment,
# through the environment's kernel helper (the site's modules, the environment's PATH,
# the repository's `start` script), or for a Charliecloud image under `ch-run` (the
# user's home bound at its own path, the host's network), in a folder of the user's home
# holding the repository at the built commit. Every notebook's default `python3` kernel is then the
# environment's Python. Other servers start as before.
#
# The environment must have been built for it (`hpcbinder build --with-server`, which
# the service does in this mode): jupyterhub-singleuser and JupyterLab inside.
#
# batchspawner (SlurmSpawner and the other batch spawners): the server runs as a batch
# job, and batchspawner's `batchspawner-singleuser` must run inside the environment (it
# reports the server's port to the Hub, then runs jupyterhub-singleuser as a Python
# script in its own interpreter). So the site
#   - adds batchspawner to what --with-server installs, in hpcbinder's site config:
#       server-packages = ["jupyterhub==5.*", "jupyterlab", "batchspawner"]
#     (the jupyterhub pin matching the Hub's major version);
#   - sets, in jupyterhub_config.py, besides this snippet:
#       c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
#       c.JupyterHub.allow_named_servers = True
#       c.Spawner.start_timeout = 300   # the queue wait and the first start of the job
#   - and, as for any batchspawner, lets the Hub submit as the user (the default
#     exec_prefix `sudo -E -u {username}`, or the site's own) with the Slurm client
#     commands and their config (SLURM_CONF or /etc/slurm/slurm.conf) on the Hub's and
#     the job's PATH. The job's resources are SlurmSpawner's req_* settings, as usual.
# The hook then writes the job's command line itself (batchspawner puts it into the job
# script unquoted): the kernel helper and the checkout, then the environment's
# batchspawner-singleuser and jupyterhub-singleuser.
#
# What the hook trusts: only the store. The kernel named in user_options must be a
# kernelspec of the store's kernels directory whose environment is in the store and
# ready; the repository URL and commit (which a user could set on their own servers)
# are passed to git as arguments, never through a shell, and run as the user.
import json
import os
import re
import shlex

from tornado import web

# The store the service builds into, and its kernels directory (`hpcbinder
# jupyter-path` prints the directory that holds `kernels/`).
HPCBINDER_STORE = os.environ.get("HPCBINDER_STORE", "/global/common/software/hpcbinder")
HPCBINDER_KERNELS = os.path.join(HPCBINDER_STORE, "kernels")
# Where in the user's home each launch's checkout goes: <folder>/<server name>.
HPCBINDER_FOLDER = "binder"

# Run as the user, inside the environment: clone (or reuse) the repository, check out
# the commit, start the server there. $1 repository, $2 commit, $3 folder, then the
# server's command.
HPCBINDER_CHECKOUT = r"""
set -e
repo=$1 commit=$2 dir=$3
shift 3
if [ ! -d "$dir/.git" ]; then
    mkdir -p "$(dirname "$dir")"
    git clone --quiet --no-checkout -- "$repo" "$dir"
fi
cd "$dir"
git -c advice.detachedHead=false checkout --quiet "$commit" --
if [ "$1" = hpcbinder-ch-run ]; then
    # A Charliecloud image: the user's home at the same path, the image's environment
    # (but the user's HOME), starting in the checkout; the host's network.
    shift
    exec ch-run --home --set-env --set-env=HOME="$HOME" --cd="$PWD" "$@"
fi
exec "$@"
"""


def hpcbinder_refused(message):
    """A launch the hook refuses: JupyterHub's REST API answers 400 with this message,
    which the service shows on the launch page (any other exception is a bare 500)."""
    return web.HTTPError(400, message.replace("%", "%%"))


def hpcbinder_pre_spawn_hook(spawner):
    """Point a named server launched by hpcbinder at its environment and checkout."""
    if not hasattr(spawner, "_hpcbinder_cmd"):
        spawner._hpcbinder_cmd = list(spawner.cmd)
    spawner.cmd = list(spawner._hpcbinder_cmd)
    # batchspawner's spawners start `batchspawner_singleuser_cmd cmd... args...` in the job.
    batch = hasattr(spawner, "batchspawner_singleuser_cmd")
    if batch:
        if not hasattr(spawner, "_hpcbinder_batch_cmd"):
            spawner._hpcbinder_batch_cmd = spawner.batchspawner_singleuser_cmd
        spawner.batchspawner_singleuser_cmd = spawner._hpcbinder_batch_cmd
    options = (spawner.user_options or {}).get("hpcbinder")
    if not options:
        return
    kernel = str(options.get("kernel") or "")
    commit = str(options.get("ref") or "")
    repo = str(options.get("repo_url") or "")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", kernel) or kernel.startswith("."):
        raise hpcbinder_refused("hpcbinder: invalid kernel name in user_options")
    if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        raise hpcbinder_refused("hpcbinder: the launch names no commit")
    if not repo or repo.startswith("-"):
        raise hpcbinder_refused("hpcbinder: the launch names no repository")
    kernels = os.path.realpath(HPCBINDER_KERNELS)
    kernel_dir = os.path.join(kernels, kernel)
    try:
        with open(os.path.join(kernel_dir, "kernel.json")) as f:
            spec = json.load(f)
        helper = spec["argv"][0]
        prefix = os.path.realpath(spec["metadata"]["hpcbinder"]["prefix"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise hpcbinder_refused(f"hpcbinder: the store has no kernel {kernel}") from None
    store = os.path.realpath(HPCBINDER_STORE)
    if os.path.realpath(helper) != os.path.join(kernel_dir, "kernel-helper.sh"):
        raise hpcbinder_refused(f"hpcbinder: kernel {kernel} has no helper of its own")
    if os.path.dirname(prefix) != os.path.join(store, "e") or not os.path.isfile(prefix + ".toml"):
        raise hpcbinder_refused(f"hpcbinder: the environment of kernel {kernel} is not ready in the store")
    image = spec["metadata"]["hpcbinder"].get("image")
    # A Charliecloud image is the directory `image` in the environment's folder, its
    # environment in /opt/env; a native environment is the prefix.
    env_bin = os.path.join(prefix, "image", "opt", "env", "bin") if image else os.path.join(prefix, "bin")
    if image and os.path.realpath(image) != os.path.join(prefix, "image"):
        raise hpcbinder_refused(f"hpcbinder: kernel {kernel} runs an image this hook cannot start")
    if not os.path.exists(os.path.join(env_bin, "jupyterhub-singleuser")):
        raise hpcbinder_refused(
            f"hpcbinder: the environment of kernel {kernel} has no jupyterhub-singleuser "
            "(build it with --with-server)"
        )
    if batch and not os.path.exists(os.path.join(env_bin, "batchspawner-singleuser")):
        raise hpcbinder_refused(
            f"hpcbinder: the environment of kernel {kernel} has no batchspawner-singleuser "
            "(add batchspawner to hpcbinder's server-packages)"
        )
    folder = os.path.join(HPCBINDER_FOLDER, spawner.name or "default")
    singleuser = [os.path.basename(part) if part.endswith("jupyterhub-singleuser") else part
                  for part in spawner.cmd] or ["jupyterhub-singleuser"]
    checkout = ["sh", "-c", HPCBINDER_CHECKOUT, "hpcbinder-checkout", repo, commit, folder]
    if image:
        inside = checkout + ["hpcbinder-ch-run", os.path.join(prefix, "image"), "--"]
    else:
        inside = [helper] + checkout
    if batch:
        # batchspawner-singleuser runs its first argument as a Python script (runpy) in
        # its own interpreter, so it comes last and from the environment; batchspawner
        # joins the words into the job script unquoted, so they are quoted here.
        spawner.batchspawner_singleuser_cmd = shlex.join(inside + ["batchspawner-singleuser"])
        spawner.cmd = [shlex.quote(part) for part in singleuser]
    else:
        spawner.cmd = inside + singleuser
    spawner.environment = dict(spawner.environment or {})
    for name, key in [("BINDER_REPO_URL", "repo_url"), ("BINDER_REF_URL", "binder_ref_url"),
                      ("BINDER_LAUNCH_HOST", "binder_launch_host"),
                      ("BINDER_REQUEST", "binder_request"),
                      ("BINDER_PERSISTENT_REQUEST", "binder_persistent_request")]:
        value = spawner.user_options.get(key)
        if isinstance(value, str):
            spawner.environment[name] = value


c.Spawner.pre_spawn_hook = hpcbinder_pre_spawn_hook  # noqa: F821 (jupyterhub's config)
