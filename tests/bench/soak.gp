# Plot of tests/bench/soak.sh's samples: gnuplot -e "tsv='…/soak.tsv'; out='…/soak.png'" soak.gp
set terminal pngcairo size 900,640 font ",10"
set output out
set datafile separator "\t"
set datafile missing "nan"
set key top left
set grid
set multiplot layout 2,1 title "leakwarden soak: runner and sidecar over the run"
set ylabel "VmRSS (MiB)"
set y2label "sessions done"
set y2tics
set ytics nomirror
plot tsv using ($1/60):($2/1024) skip 1 with lines lw 2 title "runner RSS", \
     tsv using ($1/60):($4/1024) skip 1 with lines lw 2 title "sidecar RSS", \
     tsv using ($1/60):6 skip 1 axes x1y2 with lines dt 2 lc "gray" title "sessions done"
unset y2label
unset y2tics
set ytics mirror
set xlabel "minutes"
set ylabel "open FDs"
plot tsv using ($1/60):3 skip 1 with lines lw 2 title "runner FDs", \
     tsv using ($1/60):5 skip 1 with lines lw 2 title "sidecar FDs"
unset multiplot
