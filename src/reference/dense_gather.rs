//! The window matrix of dense evaluation: every `th x tw` window of an NHWC feature map,
//! flattened row by row in HWC order, one window a row. With the first FC layer's columns
//! stored in that order (see [`crate::model::params`]), a GEMM of this matrix with the FC
//! weights is that layer applied as a `th x tw` convolution at every position.
//!
//! `cols[(i*oh + oy)*ow + ox][(dy*tw + dx)*c + ch] = x[i][oy+dy][ox+dx][ch]`, with
//! `oh = fh - th + 1`, `ow = fw - tw + 1`. A copy, so the kernel agrees bit for bit.

/// The `[n * oh * ow, th * tw * c]` window matrix of `x`, an `[n, fh, fw, c]` NHWC map.
pub fn dense_gather(shape: [usize; 4], th: usize, tw: usize, x: &[f32]) -> Vec<f32> {
    let [n, fh, fw, c] = shape;
    assert_eq!(x.len(), n * fh * fw * c, "dense_gather: x");
    assert!(th >= 1 && tw >= 1 && th <= fh && tw <= fw, "dense_gather: {th}x{tw} windows over {fh}x{fw}");
    let (oh, ow) = (fh - th + 1, fw - tw + 1);
    let mut cols = Vec::with_capacity(n * oh * ow * th * tw * c);
    for i in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for dy in 0..th {
                    for dx in 0..tw {
                        let at = ((i * fh + oy + dy) * fw + ox + dx) * c;
                        cols.extend_from_slice(&x[at..at + c]);
                    }
                }
            }
        }
    }
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // One 2x3 map, one channel, 2x2 windows: two positions.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(dense_gather([1, 2, 3, 1], 2, 2, &x), vec![1.0, 2.0, 4.0, 5.0, 2.0, 3.0, 5.0, 6.0]);
        // A window the size of the map is the map itself (the standard forward's flatten).
        let x: Vec<f32> = (0..2 * 2 * 2 * 3).map(|v| v as f32).collect();
        assert_eq!(dense_gather([2, 2, 2, 3], 2, 2, &x), x);
    }
}
