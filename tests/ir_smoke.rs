use qfuse::ir;

const SRC: &str = r#"
graph "t" {
  sym B max=4
  %0 = input "x" : f32[B,8]
  %1 = weight @lin.weight : f32[16,8]
  %2 = matmul %0, %1 {transpose_b} : f32[B,16] loc("lin")
  %3, %4 = quantize %2 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,16], f32[B,1]
  %5 = dequantize %3 {f8e4m3, per_token, scale=%4} : f32[B,16]
  %6 = weight @"w s" : i8[16,8]
  %7 = weight @s : f32[16]
  %8 = dequantize %6 {i8, per_channel(0), scale=%7, zero=3} : f32[16,8]
  %9 = layernorm %5, %7, %7 {eps=1e-12} : f32[B,16]
  %10 = scalar -inf : f32[]
  %11 = add %9, %10 : f32[B,16]
  return "y" = %11, "w" = %8
}
"#;

#[test]
fn smoke_round_trip() {
    let g = ir::parse(SRC).unwrap();
    ir::verify(&g, "after parse").unwrap();
    let text = ir::print(&g);
    let g2 = ir::parse(&text).unwrap();
    assert_eq!(ir::print(&g2), text);
    println!("{text}");
}
