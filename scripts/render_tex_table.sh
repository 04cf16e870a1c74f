#!/usr/bin/env bash
# Render an experiment's tables/accuracy.tex to a PNG, to look at the table as a paper would print it.
#
#   scripts/render_tex_table.sh EXPERIMENT_DIR OUT.png [TABLE]      (TABLE: accuracy (default), efficiency,
#                                                                   sft_vs_baselines)
#
# Why standalone: the page is cropped to the table by LaTeX itself (`standalone` with `varwidth`), so
# no pdfcrop (texlive-extra-utils) is needed; the width limit is a two-column paper's full text width
# (17 cm), so a caption wraps as it would there and a table wider than that shows its overflow.
# Needs pdflatex (texlive-latex-base, texlive-latex-recommended for booktabs and standalone's varwidth)
# and pdftoppm (poppler-utils); .ci/run installs both. Exit 2 with one line on bad input.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }

[ $# -ge 2 ] && [ $# -le 3 ] || fail "usage: $0 EXPERIMENT_DIR OUT.png [accuracy|efficiency|sft_vs_baselines]"
exp_dir=$1
out=$2
table=${3:-accuracy}
case "$table" in accuracy|efficiency|sft_vs_baselines) ;; *) fail "unknown table '$table' (accuracy, efficiency, sft_vs_baselines)";; esac
tex="$exp_dir/tables/$table.tex"
[ -f "$tex" ] || fail "no $tex; run \`python cli.py report\` for that experiment first"
case "$out" in *.png) ;; *) fail "OUT must end in .png, got '$out'";; esac
out_dir=$(dirname -- "$out")
[ -d "$out_dir" ] && [ -w "$out_dir" ] || fail "cannot write $out: $out_dir is not a writable folder"
for tool in pdflatex pdftoppm; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (apt-get install texlive-latex-base texlive-latex-recommended poppler-utils)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -- "$tex" "$work/table.tex"
# The table float becomes a plain box (standalone has no floats); \caption still works inside it.
cat >"$work/page.tex" <<'TEX'
\documentclass[varwidth=17cm,border=8pt]{standalone}
\usepackage{booktabs}
\makeatletter
\renewenvironment{table}[1][]{\def\@captype{table}\centering}{}
\makeatother
\begin{document}
\input{table.tex}
\end{document}
TEX
if ! (cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error page.tex >pdflatex.out 2>&1); then
  echo "error: pdflatex failed on $tex:" >&2
  grep -A3 '^!' "$work/page.log" >&2 || tail -n 20 "$work/pdflatex.out" >&2
  exit 1
fi
pdftoppm -png -r 150 -singlefile "$work/page.pdf" "$work/page"
mv -f -- "$work/page.png" "$out"
echo "$out"
