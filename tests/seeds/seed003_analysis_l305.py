# Verbatim from ../shared/seeds/003_a78b5192638a8b7f.txt lines 305-347 (run unchanged by tests/src/seeds.rs).
import pandas as pd
import matplotlib.pyplot as plt

# Load CUDA graph usage
graphs = pd.read_csv('cuda_graph_usage.csv')

# Find most-used graphs
top_graphs = graphs.nlargest(10, 'replay_count')
print("Top 10 CUDA Graphs:")
print(top_graphs[['num_tokens', 'replay_count']])

# Load KV cache usage
kv_cache = pd.read_csv('kv_cache_usage.csv')

# Plot cache usage over time
plt.figure(figsize=(12, 6))
plt.plot(kv_cache['timestamp_sec'], kv_cache['usage_pct'])
plt.xlabel('Time (seconds)')
plt.ylabel('KV Cache Usage (%)')
plt.title('KV Cache Usage Over Time')
plt.grid(True)
plt.savefig('kv_cache_usage.png')

# Load MoE expert activations (if using MoE model)
moe_activations = pd.read_csv('moe_expert_tracking/moe_expert_activations.csv')

# Analyze expert load balance per layer
for layer_idx in moe_activations['layer_idx'].unique():
    layer_data = moe_activations[moe_activations['layer_idx'] == layer_idx]
    print(f"\nLayer {layer_idx}:")
    print(f"  Expert coverage: {len(layer_data)}/{layer_data['expert_id'].max()+1}")
    print(f"  Activation range: {layer_data['percentage'].min():.2f}% - {layer_data['percentage'].max():.2f}%")
    print(f"  Load balance ratio: {layer_data['activation_count'].max() / layer_data['activation_count'].min():.2f}")

# Plot expert activation distribution
layer_0 = moe_activations[moe_activations['layer_idx'] == 0]
plt.figure(figsize=(10, 6))
plt.bar(layer_0['expert_id'], layer_0['percentage'])
plt.xlabel('Expert ID')
plt.ylabel('Activation Percentage (%)')
plt.title('Expert Activation Distribution - Layer 0')
plt.grid(True, axis='y')
plt.savefig('expert_activations.png')
