#!/usr/bin/env bash
# Render an experiment's tables/accuracy.tex (or another of its tables) to a PNG, to look at the table
# as a paper would print it.
#
#   scripts/render_tex_table.sh EXPERIMENT_DIR OUT.png [accuracy|efficiency|sft_vs_baselines]
#
# How: the table is typeset in a box 17 cm wide (a two-column paper's full text width, so the caption
# wraps as it would there), or as wide as its tabular where that is wider (the PNG then shows all of a
# table that would overflow a page: check its width against your paper's), the PDF page is made exactly the size
# of that box (pdfTeX primitives: no standalone class, no pdfcrop, i.e. nothing beyond Debian's
# texlive-latex-base and texlive-latex-recommended), pdftoppm (poppler-utils) renders it at 150 dpi, and
# the white margins left and right of a narrow table are trimmed with Pillow (a dependency of
# torchvision) when it is importable. .ci/run installs pdflatex and pdftoppm. Bad input: one line, exit 2.
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
  command -v "$tool" >/dev/null 2>&1 \
    || fail "$tool not found (apt-get install texlive-latex-base texlive-latex-recommended poppler-utils)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -- "$tex" "$work/table.tex"
sed -n '/^\\begin{tabular}/,/^\\end{tabular}/p' "$tex" >"$work/tabular.tex"
[ -s "$work/tabular.tex" ] || fail "$tex holds no tabular"
# The table float becomes a plain box (a float cannot go into a box); \caption still works inside it.
cat >"$work/page.tex" <<'TEX'
\documentclass{article}
\usepackage{booktabs}
\makeatletter
\renewenvironment{table}[1][]{\def\@captype{table}\centering}{}
\makeatother
\begin{document}
\setbox1=\hbox{\small\input{tabular.tex}}
\dimen0=17cm
\ifdim\wd1>\dimen0 \dimen0=\wd1 \fi
\setbox0=\vbox{\hsize=\dimen0 \textwidth=\hsize \columnwidth=\hsize \linewidth=\hsize \input{table.tex}}
\pdfpagewidth=\dimexpr\wd0+16pt\relax
\pdfpageheight=\dimexpr\ht0+\dp0+16pt\relax
\pdfhorigin=8pt
\pdfvorigin=8pt
\shipout\box0
\end{document}
TEX
if ! (cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error page.tex >pdflatex.out 2>&1); then
  echo "error: pdflatex failed on $tex:" >&2
  grep -A3 '^!' "$work/page.log" >&2 || tail -n 20 "$work/pdflatex.out" >&2
  exit 1
fi
pdftoppm -png -r 150 -singlefile "$work/page.pdf" "$work/page"
python3 - "$work/page.png" 2>/dev/null <<'PY' || true
import sys
from PIL import Image, ImageOps

path = sys.argv[1]
img = Image.open(path).convert("RGB")
box = ImageOps.invert(img).getbbox()  # the non-white content
if box:
    pad = 16
    left, right = max(0, box[0] - pad), min(img.width, box[2] + pad)
    img.crop((left, 0, right, img.height)).save(path)
PY
mv -f -- "$work/page.png" "$out"
echo "$out"
