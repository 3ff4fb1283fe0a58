#!/usr/bin/env bash
# Packaging checks (CI): the units pass `systemd-analyze verify` and rate
# OK or better in `systemd-analyze security --offline=true`; both packages
# build; their contents are what the README's guide says; they install into
# a throwaway root with `dpkg --root`.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "packaging check failed: $*" >&2; exit 1; }

bash packaging/build-debs.sh > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; fail "package build"; }

for unit in o1-relay o1-agent; do
  # verify needs the ExecStart binary to exist: point it at the built one.
  sed "s|/usr/bin/$unit|$PWD/target/release/$unit|" "packaging/systemd/$unit.service" > "$WORK/$unit.service"
  if ! out=$(systemd-analyze verify "$WORK/$unit.service" 2>&1); then
    echo "$out"; fail "systemd-analyze verify $unit"
  fi
  # Unknown users/groups on this machine are not unit errors.
  if echo "$out" | grep -v -e "Failed to resolve" -e "^$" | grep -q .; then
    echo "$out"; fail "systemd-analyze verify $unit printed warnings"
  fi
  rating=$(systemd-analyze security --offline=true "packaging/systemd/$unit.service" 2>/dev/null | grep "Overall exposure level" || true)
  echo "$rating"
  echo "$rating" | grep -Eq " (OK|SAFE) " || fail "$unit is rated worse than OK"
done

for pkg in o1-relay o1-agent; do
  deb=$(ls target/debian/${pkg}_*.deb | head -n1)
  [ -f "$deb" ] || fail "no $pkg package"
  contents=$(dpkg-deb -c "$deb")
  for path in "./usr/bin/$pkg" "./lib/systemd/system/$pkg.service" "./etc/o1/${pkg#o1-}.toml" "./usr/share/doc/$pkg/README.md"; do
    echo "$contents" | grep -q " $path\$" || fail "$pkg lacks $path"
  done
  dpkg-deb -f "$deb" Depends | grep -q adduser || fail "$pkg must depend on adduser"
  dpkg-deb -e "$deb" "$WORK/control-$pkg"
  grep -qx "/etc/o1/${pkg#o1-}.toml" "$WORK/control-$pkg/conffiles" || fail "$pkg config is not a conffile"
  for script in postinst prerm postrm; do
    [ -x "$WORK/control-$pkg/$script" ] || fail "$pkg lacks $script"
    sh -n "$WORK/control-$pkg/$script" || fail "$pkg $script has a syntax error"
  done
  grep -q "adduser --system" "$WORK/control-$pkg/postinst" || fail "$pkg postinst creates no system user"
  grep -q "deluser" "$WORK/control-$pkg/postrm" || fail "$pkg postrm removes no user on purge"
done

# Install both into a throwaway root, then purge them.
ROOT="$WORK/root"
mkdir -p "$ROOT/var/lib/dpkg/info" "$ROOT/var/lib/dpkg/updates" "$ROOT/var/lib/dpkg/triggers"
touch "$ROOT/var/lib/dpkg/status" "$ROOT/var/lib/dpkg/available"
DPKG="dpkg --root=$ROOT --force-script-chrootless --force-depends --force-not-root --log=$WORK/dpkg.log"
$DPKG -i target/debian/o1-relay_*.deb target/debian/o1-agent_*.deb > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; fail "dpkg --root install"; }
for path in usr/bin/o1-relay usr/bin/o1-agent etc/o1/relay.toml etc/o1/agent.toml lib/systemd/system/o1-relay.service; do
  [ -e "$ROOT/$path" ] || fail "$path not installed"
done
"$ROOT/usr/bin/o1-relay" --version | grep -q o1-relay || fail "installed relay does not run"
"$ROOT/usr/bin/o1-agent" --config "$ROOT/etc/o1/agent.toml" check-config > /dev/null || fail "shipped agent.toml is invalid"
"$ROOT/usr/bin/o1-relay" --config "$ROOT/etc/o1/relay.toml" hash-token x > /dev/null || fail "relay CLI"
$DPKG --purge o1-relay o1-agent > "$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; fail "purge"; }
[ ! -e "$ROOT/usr/bin/o1-relay" ] && [ ! -e "$ROOT/etc/o1/relay.toml" ] || fail "purge left files behind"
echo "packaging checks passed"
