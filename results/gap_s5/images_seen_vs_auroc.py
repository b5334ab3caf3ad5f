"""Per-run images seen, cap, wall time and test AUROC/accuracy of the session-5 PE runs, and their correlation
(RESULTS.md section 10). Run from the repository root."""
import json, glob, numpy as np, os
rows=[]
for r in sorted(glob.glob('runs/gap/s5/cs_*-s?')):
    info=json.load(open(f'{r}/run.json')); m=json.load(open(f'{r}/eval/test/metrics.json'))['metrics']
    m192=json.load(open(f'{r}/eval/test-192px/metrics.json'))['metrics']
    rows.append((os.path.basename(r), info['images_seen'], info['hit_time_cap'], round(info['wall_s']/60,1), m['auroc_macro']['value'], m['accuracy']['value'], m192['auroc_macro']['value']))
for x in rows: print(*x, sep='\t')
seen=np.array([x[1] for x in rows]); au=np.array([x[4] for x in rows]); acc=np.array([x[5] for x in rows])
from scipy.stats import spearmanr, pearsonr
print('pearson seen~auroc', pearsonr(seen,au)); print('spearman', spearmanr(seen,au)); print('pearson seen~acc', pearsonr(seen,acc))
cap=np.array([x[2] for x in rows])
print('capped mean auroc', au[cap].mean(), cap.sum(), 'uncapped', au[~cap].mean(), (~cap).sum())
