//! A short list held inline, for the per-sample paths that should not allocate.

/// A list of up to `N` items inline (on the stack, or inside its owner) that moves to the heap
/// beyond that: the common case never allocates and more items still work.
#[derive(Clone, Debug)]
pub(crate) enum InlineVec<T: Copy, const N: usize> {
    Inline([T; N], usize),
    Heap(Vec<T>),
}

impl<T: Copy, const N: usize> InlineVec<T, N> {
    /// An empty list; `fill` only initializes the unused slots.
    pub(crate) fn new(fill: T) -> Self {
        InlineVec::Inline([fill; N], 0)
    }

    pub(crate) fn push(&mut self, v: T) {
        match self {
            InlineVec::Inline(a, len) if *len < N => {
                a[*len] = v;
                *len += 1;
            }
            InlineVec::Inline(a, len) => {
                let mut h = a[..*len].to_vec();
                h.push(v);
                *self = InlineVec::Heap(h);
            }
            InlineVec::Heap(h) => h.push(v),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            InlineVec::Inline(a, len) => &a[..*len],
            InlineVec::Heap(h) => h,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            InlineVec::Inline(a, len) => &mut a[..*len],
            InlineVec::Heap(h) => h,
        }
    }

    /// Removes item `i`, keeping the order of the rest (panics if out of range, as `Vec`).
    pub(crate) fn remove(&mut self, i: usize) -> T {
        match self {
            InlineVec::Inline(a, len) => {
                assert!(i < *len, "index {i} out of range");
                let v = a[i];
                a.copy_within(i + 1..*len, i);
                *len -= 1;
                v
            }
            InlineVec::Heap(h) => h.remove(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_the_heap_in_order() {
        let mut v = InlineVec::<u32, 2>::new(0);
        assert!(v.is_empty());
        for i in 1..=5 {
            v.push(i);
        }
        assert!(matches!(v, InlineVec::Heap(_)));
        assert_eq!(v.as_slice(), &[1, 2, 3, 4, 5]);
        assert_eq!(v.remove(0), 1);
        let mut w = InlineVec::<u32, 4>::new(0);
        for i in 1..=3 {
            w.push(i);
        }
        assert_eq!(w.remove(1), 2);
        assert_eq!(w.as_slice(), &[1, 3]);
        assert_eq!(w.len(), 2);
    }
}
