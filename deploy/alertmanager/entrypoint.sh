#!/bin/sh
# Alertmanager's entrypoint (compose.yaml): alertmanager.yml with its ${NAME} and ${NAME:-default}
# placeholders filled from the environment, checked by amtool, then Alertmanager on it. The image
# is busybox (sh and awk, no Python). Values are written inside YAML double quotes, escaped, so a
# password with a quote or a backslash stays one string. Nothing is printed but the names of
# missing variables: the values are secrets (the webhook URL carries a token, the SMTP password).
#   entrypoint.sh TEMPLATE OUTPUT [alertmanager flags...]   (render, check, exec alertmanager)
#   entrypoint.sh --render-only TEMPLATE OUTPUT            (render and check: the tests)
set -eu

render_only=false
if [ "${1:-}" = "--render-only" ]; then
  render_only=true
  shift
fi
template=$1
output=$2
shift 2

umask 077 # the rendered file holds the secrets: readable by this user only
awk '
  function escaped(v) {
    gsub(/[\\"]/, "\\\\&", v)  # a backslash before each backslash and double quote
    return v
  }
  /^[ \t]*#/ { print; next }  # comments may mention placeholders
  {
    line = $0
    out = ""
    while (match(line, /\$\{[A-Z][A-Z0-9_]*(:-[^}]*)?\}/)) {
      spec = substr(line, RSTART + 2, RLENGTH - 3)
      name = spec
      fallback = ""
      optional = 0
      cut = index(spec, ":-")
      if (cut > 0) {
        name = substr(spec, 1, cut - 1)
        fallback = substr(spec, cut + 2)
        optional = 1
      }
      value = ENVIRON[name]
      if (value ~ /\n/) {
        printf "alertmanager: %s must be one line\n", name > "/dev/stderr"
        failed = 1
      } else if (value == "" && !optional) {
        printf "alertmanager: set %s in deploy/.env (see deploy/.env.example)\n", name > "/dev/stderr"
        failed = 1
      }
      if (value == "") value = fallback
      out = out substr(line, 1, RSTART - 1) escaped(value)
      line = substr(line, RSTART + RLENGTH)
    }
    print out line
  }
  END { if (failed) exit 2 }
' "$template" > "$output.tmp" || {
  rm -f "$output.tmp"
  exit 2
}
mv "$output.tmp" "$output"
# amtool prints the receivers and templates it found, never a secret's value.
amtool check-config "$output" >/dev/null 2>&1 || {
  echo "alertmanager: the configuration rendered from $template is not valid (amtool check-config)" >&2
  amtool check-config "$output" >&2 || true
  exit 2
}
if [ "$render_only" = true ]; then
  exit 0
fi
exec alertmanager --config.file="$output" "$@"
