# Verbatim from ../shared/seeds/001_bccd0eb5cfac7de6.txt lines 489-494 (run unchanged by tests/src/seeds.rs).
# 4. Analyze
python -c "
import pandas as pd
df = pd.read_csv('/tmp/vllm_profiling/session_*/forward_pass_timing.csv', glob=True)
print(f'Mean forward time: {df[\"forward_time_ms\"].mean():.2f}ms')
"
