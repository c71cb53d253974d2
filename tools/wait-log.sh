# Sourced by the tools' scripts: wait_log FILE PATTERN [TENTHS]
# returns once FILE has a line matching PATTERN (grep), checked every 0.1 s
# for at most TENTHS tenths of a second (default 1200: 2 minutes); otherwise
# it prints the file's last lines and exits the script with 1.
wait_log() {
  local _
  for _ in $(seq 1 "${3:-1200}"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "$(basename "$0"): timed out waiting for '$2' in $1" >&2; tail -20 "$1" >&2; exit 1
}
