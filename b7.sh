source /tmp/review3/n/env.sh
for n in X1 X2 X3 X4; do rm -rf $R/$n; done
$PY /tmp/review3/n/sig.py X1 --when csvstep:5 --sigs TERM,TERM --gap 0.05 -- $B | grep -v 'CPU MFU'
$PY train.py ckpt_path=last hydra.run.dir=$R/X1 > X1.r.out 2>&1; echo X1 resume rc=$?
$PY /tmp/review3/n/sig.py X2 --when csvstep:6 --sigs INT -- $B | grep -v 'CPU MFU'
$PY train.py ckpt_path=last hydra.run.dir=$R/X2 > X2.r.out 2>&1; echo X2 resume rc=$?
$PY /tmp/review3/n/sig.py X3 --when time:3 --sigs TERM -- $B | grep -v 'CPU MFU'
$PY train.py ckpt_path=last hydra.run.dir=$R/X3 > X3.r.out 2>&1; echo X3 resume rc=$?
$PY /tmp/review3/n/sig.py X4 --when csvstep:5 --sigs TERM,INT --gap 0.02 -- $B | grep -v 'CPU MFU'
$PY train.py ckpt_path=last hydra.run.dir=$R/X4 > X4.r.out 2>&1; echo X4 resume rc=$?
