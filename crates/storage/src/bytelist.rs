//! Many short byte strings (encoded keys or rows) in one allocation.

/// Append-only list of byte strings stored back to back, with their end offsets.
#[derive(Debug, Default)]
pub(crate) struct ByteList {
    data: Vec<u8>,
    /// `offsets[i]..offsets[i + 1]` is string `i`; starts with 0 once anything is pushed.
    offsets: Vec<usize>,
}

impl ByteList {
    pub fn push(&mut self, s: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.data.extend_from_slice(s);
        self.offsets.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The first index for which `pred` is false (the list must be partitioned by `pred`).
    pub fn partition_point(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if pred(self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn memory_bytes(&self) -> usize {
        self.data.capacity() + self.offsets.capacity() * std::mem::size_of::<usize>()
    }
}
