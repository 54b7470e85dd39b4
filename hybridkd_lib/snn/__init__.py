"""Floor 2: spiking neurons (spikingjelly LIF), the rate-aware layers, RateBP, the LIF backends and spike costs."""
