# Verbatim from ../shared/seeds/001_bccd0eb5cfac7de6.txt lines 301-307 (run unchanged by tests/src/seeds.rs).
# Verify CUDA Events are working
import pandas as pd
df = pd.read_csv('forward_pass_timing.csv')

# Timings should be realistic (not ~0.1ms)
assert df['forward_time_ms'].mean() > 1.0, "Timing too low - sync not working?"
print(f"Mean forward time: {df['forward_time_ms'].mean():.2f}ms")
