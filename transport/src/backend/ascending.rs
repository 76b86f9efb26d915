//! A set of positions kept in ascending order (Kafka offsets, JetStream stream
//! sequences in progress), cheap where they come and go in order: a broker hands them
//! out in order, so each usually joins at the back and leaves from the front.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct Ascending<T>(VecDeque<T>);

impl<T> Default for Ascending<T> {
    fn default() -> Self {
        Ascending(VecDeque::new())
    }
}

impl<T: Ord + Copy> Ascending<T> {
    /// Adds `position` (once: a repeat is ignored).
    pub fn insert(&mut self, position: T) {
        match self.0.back() {
            Some(&last) if last >= position => {
                if let Err(at) = self.0.binary_search(&position) {
                    self.0.insert(at, position);
                }
            }
            _ => self.0.push_back(position),
        }
    }

    /// Takes `position` out; whether it was there.
    pub fn remove(&mut self, position: T) -> bool {
        if self.0.front() == Some(&position) {
            self.0.pop_front();
            return true;
        }
        match self.0.binary_search(&position) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Drops the lowest positions until at most `max` are left.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub fn keep_highest(&mut self, max: usize) {
        while self.0.len() > max {
            self.0.pop_front();
        }
    }

    pub fn first(&self) -> Option<T> {
        self.0.front().copied()
    }

    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_stay_sorted_whatever_order_they_come_and_go_in() {
        let mut open = Ascending::default();
        for offset in [5, 6, 9, 7, 2, 7] {
            open.insert(offset);
        }
        assert_eq!(open.0, [2, 5, 6, 7, 9], "sorted, a repeat kept once");
        assert!(open.remove(6));
        assert!(!open.remove(6), "gone already");
        assert!(!open.remove(3), "never there");
        assert_eq!(open.first(), Some(2));
        assert!(open.remove(2));
        assert_eq!((open.first(), open.len()), (Some(5), 3));
        assert!(open.remove(9) && open.remove(5));
        assert_eq!(open.first(), Some(7));
        assert!(open.remove(7));
        assert_eq!((open.first(), open.len()), (None, 0));
    }

    #[test]
    fn the_lowest_go_first_when_bounded() {
        let mut open = Ascending::default();
        for sequence in [4u64, 1, 3, 2] {
            open.insert(sequence);
        }
        open.keep_highest(2);
        assert_eq!(open.0, [3, 4]);
        open.clear();
        assert_eq!(open.first(), None);
    }
}
