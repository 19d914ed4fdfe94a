#!/usr/bin/env bash
# Build dist/vsnet_<version>_amd64.deb: vsnet and its Python dependencies in a virtualenv of
# their own under /opt/vsnet (as dh-virtualenv does: Debian 12's python3-pydantic & co. are
# too old), run by Debian's own python3.11; entry points in /usr/bin; the unit, conffiles,
# man pages, bash completion, docs. Plain dpkg-deb, no debhelper: everything the package
# holds is spelled out here and in packaging/debian/.
#
#   bash packaging/build-deb.sh [PIP_PYTHON]   (PIP_PYTHON: an interpreter with pip, to
#                                              install into the package's virtualenv)
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
cd "$project"
pip_python=${1:-$project/.venv/bin/python}
python=/usr/bin/python3.11            # the interpreter the package runs on (Debian 12's)
prefix=/opt/vsnet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
arch=$(dpkg --print-architecture)
build=$project/build/deb
root=$build/root
deb=$project/dist/vsnet_${version}_${arch}.deb

# setuptools copies the package into build/lib and leaves there what the tree no longer has
rm -rf "$build" "$project/build/lib"
mkdir -p "$root/DEBIAN" "$project/dist"

# --- the application and its dependencies ----------------------------------------------
"$python" -m venv --without-pip "$root$prefix"
"$pip_python" -m pip --python "$root$prefix/bin/python" install --quiet --no-compile \
    --no-warn-script-location --disable-pip-version-check --no-cache-dir \
    --no-binary PyYAML "$project"
# only vsnet's own commands (and the interpreter links) in bin/
for entry in "$root$prefix"/bin/*; do
    case ${entry##*/} in vsnetd|vsnetctl|vsnet-exec|python|python3|python3.11) ;; *) rm "$entry" ;; esac
done
# the virtualenv was made under $root: point it at where it will live (regular files only:
# sed -i on the python symlinks would replace them with copies)
find "$root$prefix/bin" "$root$prefix/pyvenv.cfg" -type f -exec sed -i "s|$root$prefix|$prefix|g" {} +
rm -f "$root$prefix/lib64"  # venv's lib64 -> lib convenience link; nothing uses it
if grep -rlF "$root" "$root$prefix"; then echo "build path left in the package" >&2; exit 1; fi
# What the three programs import: postinst byte-compiles these (not all of pyroute2 & co.)
"$root$prefix/bin/python" - "$root$prefix" "$prefix" >"$root$prefix/lib/vsnet-bytecode.list" <<'PY'
import sys
import prometheus_client, systemd.daemon, systemd.journal, yaml  # noqa: F401
import vsnetd.cli, vsnetd.completion, vsnetd.daemon, vsnetd.exec, vsnetd.metrics  # noqa: F401
built, prefix = sys.argv[1], sys.argv[2]
print("\n".join(sorted({m.__file__.replace(built, prefix, 1) for m in list(sys.modules.values())
                        if (getattr(m, "__file__", None) or "").startswith(built)
                        and m.__file__.endswith(".py")})))
PY
find "$root$prefix" -name __pycache__ -prune -exec rm -rf {} +  # compiled by postinst
rm -f "$root$prefix"/bin/activate* "$root$prefix"/bin/Activate.ps1
# pydantic-core, watchfiles & co. ship stripped manylinux builds; ours (systemd-python) too
find "$root$prefix" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +

mkdir -p "$root/usr/bin"
for program in vsnetd vsnetctl vsnet-exec; do
    ln -s "$prefix/bin/$program" "$root/usr/bin/$program"
done

# --- systemd, configuration ---------------------------------------------------------------
install -D -m 644 systemd/vsnetd.service "$root/lib/systemd/system/vsnetd.service"
install -D -m 644 packaging/debian/servers.yaml "$root/etc/vsnet/servers.yaml"
install -d -m 755 "$root/etc/vsnet/servers.d"
install -D -m 644 packaging/debian/default "$root/etc/default/vsnetd"
install -D -m 644 packaging/rt_protos.d/vsnet.conf "$root/etc/iproute2/rt_protos.d/vsnet.conf"
install -D -m 644 packaging/systemd-networkd/10-vsnet.conf \
    "$root/etc/systemd/networkd.conf.d/10-vsnet.conf"
if [[ -f packaging/ocf/vsnet ]]; then  # the Pacemaker resource agent, when there is one
    install -D -m 755 packaging/ocf/vsnet "$root/usr/lib/ocf/resource.d/vsnet/server"
fi

# --- man pages, completion, documentation ------------------------------------------------
man=$build/man
"$root$prefix/bin/python" -m vsnetd.manpages "$man"
for page in "$man"/*; do
    section=${page##*.}
    install -D -m 644 "$page" "$root/usr/share/man/man$section/$(basename "$page")"
    gzip -9n "$root/usr/share/man/man$section/$(basename "$page")"
done
completions=$root/usr/share/bash-completion/completions
install -d "$completions"
"$root$prefix/bin/python" -m vsnetd.completion bash "$prefix/bin/python" >"$completions/vsnetctl"
chmod 644 "$completions/vsnetctl"
ln -s vsnetctl "$completions/vsnetd"
ln -s vsnetctl "$completions/vsnet-exec"

doc=$root/usr/share/doc/vsnet
install -D -m 644 packaging/debian/copyright "$doc/copyright"
install -m 644 README.md docs/*.md "$doc/"
install -d "$doc/examples" "$doc/schemas"
install -m 644 packaging/examples/* "$doc/examples/"
install -m 644 etc/vsnet/servers.yaml "$doc/examples/servers.yaml"
install -m 644 schemas/*.json "$doc/schemas/"
sed "s/@VERSION@/$version/; s/@DATE@/$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null \
    || date +%s)")/" packaging/debian/changelog >"$doc/changelog"
gzip -9n "$doc/changelog" "$doc/README.md" "$doc"/broker-protocol.md
install -D -m 644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/vsnet"

# --- control ------------------------------------------------------------------------------
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$root/DEBIAN/"
install -m 644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
# shared libraries the compiled extensions need, as Debian package dependencies
shlibs=$(cd "$build" && mkdir -p debian && : >debian/control &&
         dpkg-shlibdeps -O -e$(find "$root$prefix" -name '*.so' | paste -sd' ' | sed 's/ / -e/g') \
             2>/dev/null | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@SHLIBS@/${shlibs:+$shlibs, }/" packaging/debian/control >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
chmod 644 "$root/DEBIAN/md5sums"

find "$root" -type d -exec chmod 755 {} +
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
