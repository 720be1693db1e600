# Verbatim from ../shared/seeds/003_a78b5192638a8b7f.txt lines 493-507 (run unchanged by tests/src/seeds.rs).
# Check expert coverage per layer
cd moe_expert_tracking/

# Count unique experts activated
awk -F',' 'NR>1 {print $1}' moe_expert_activations.csv | sort -u | wc -l

# Find load imbalance per layer
python -c "
import pandas as pd
df = pd.read_csv('moe_expert_activations.csv')
for layer in df['layer_idx'].unique():
    layer_df = df[df['layer_idx'] == layer]
    ratio = layer_df['activation_count'].max() / layer_df['activation_count'].min()
    print(f'Layer {layer}: load balance ratio = {ratio:.2f}')
"
