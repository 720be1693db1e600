# Verbatim from ../shared/seeds/003_a78b5192638a8b7f.txt lines 567-574 (run unchanged by tests/src/seeds.rs).
# convert_to_prometheus.py
import pandas as pd

kv_cache = pd.read_csv('kv_cache_usage.csv')

# Generate Prometheus metrics
for _, row in kv_cache.iterrows():
    print(f'vllm_kv_cache_usage{{timestamp="{row["timestamp_sec"]}"}} {row["usage_pct"]}')
