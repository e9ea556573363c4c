//! Weight-quantization algorithms on plain matrices: round-to-nearest groups, SmoothQuant
//! factors, the AWQ scale search and GPTQ. They know nothing of the IR; `quant::insert` applies
//! their results to a graph.
