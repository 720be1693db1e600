# Verbatim from ../shared/seeds/001_bccd0eb5cfac7de6.txt lines 177-195 (run unchanged by tests/src/seeds.rs).
import pandas as pd
import json

# Load forward pass timing
df = pd.read_csv('forward_pass_timing.csv')
prefill = df[df['phase'] == 'prefill']
decode = df[df['phase'] == 'decode']

print(f"Prefill mean: {prefill['forward_time_ms'].mean():.2f}ms")
print(f"Decode mean: {decode['forward_time_ms'].mean():.2f}ms")

# Load summaries
with open('batch_utilization_summary.json') as f:
    batch_summary = json.load(f)
print(f"Token utilization: {batch_summary['mean_token_utilization_pct']:.1f}%")

with open('preemption_summary.json') as f:
    preempt_summary = json.load(f)
print(f"Preemption rate: {preempt_summary['total_preemptions']/preempt_summary['total_requests']*100:.1f}%")
