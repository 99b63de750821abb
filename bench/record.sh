# shellcheck shell=bash
# Sourced by the bench scripts: records a block of figures in bench/RESULTS.md.
#
# record_in_results HEADING BLOCK: appends BLOCK at the end of the section HEADING (a "## "
# line; made at the end of the file when missing), before the next "## " heading.
record_in_results() {
    local heading=$1 block=$2 out=bench/RESULTS.md tmp
    [ -f "$out" ] || echo "# multinode benchmark results" >"$out"
    grep -qxF "$heading" "$out" || printf '\n%s\n' "$heading" >>"$out"
    tmp=$(mktemp)
    BLOCK=$block HEADING=$heading awk '
        /^## / && inside { print ENVIRON["BLOCK"]; print ""; inside = 0; done = 1 }
        { print }
        $0 == ENVIRON["HEADING"] && !done { inside = 1 }
        END { if (inside) { print ""; print ENVIRON["BLOCK"] } }
    ' "$out" >"$tmp"
    mv "$tmp" "$out"
    echo "recorded in $out under \"$heading\"" >&2
}
