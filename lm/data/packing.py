"""BOS-aligned rows: every training row starts at a document start, its documents packed by best fit.

Documents. A prepared split reads `EOT doc0 EOT doc1 …` (lm.data.prepare): a document is the slice from its
<|endoftext|> up to the next one, its EOT included. A row starts with that EOT as its BOS (as nanochat's rows start
with BOS): nothing is inserted or re-prepared; with x = row[:-1], y = row[1:] the first text token of every
document is a target, predicted from the EOT as in a stream window; and each document of a row begins with its
EOT, so document boundaries (for document masking) are the EOT positions, the row start included.

Best fit, crop the rest (nanochat's rule). A row of seq_len + 1 tokens takes, while room is left, the longest
remaining document that fits the room whole; when none fits, the shortest one is cropped to the room and its rest
dropped. Rows are exactly full (no padding) and every row starts at a document start.

Long documents are cropped, not split: a document is cut to its first min(seq_len + 1, max_doc_tokens) tokens and
the rest dropped. A split-off piece would start a row (or its place in one) in the middle of a document, without
its beginning: what aligning to documents is meant to avoid. The cost is data: a corpus of long documents loses
most of their tokens, reported as `cropped_fraction` (nanochat reports ~35% cropped at 2048 tokens on
FineWeb-Edu); prepare more data, or use stream windows, where that matters.

Blocks. The split is cut into blocks of BLOCK_ROWS * (seq_len + 1) tokens; a block packs the documents whose EOT
lies in it (the last one read past the block's end as far as the crop needs), on their own, into as many rows as
they fill; documents left over when less than a row remains are not used. So packing is a pure function of the
split, seq_len and max_doc_tokens, and row i is computed when read, from its block alone. Setup packs every
block once to count its rows (2 bytes per block are kept, and sent to DataLoader workers); the rows are numbered
block after block, and the mixture orders them like stream windows: a new permutation per epoch, drawn from
(seed, source, epoch), the position being the samples consumed.
"""

import bisect
from typing import NamedTuple

import numpy as np

from lm.data.packed import PackedWindows
from lm.data.tokenizer import EOT
from lm.errors import UserError

BLOCK_ROWS = 256  # rows' worth of tokens per packing block, whose documents are the candidates for its rows


def best_fit(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack documents of `lengths` into full rows of `row_len` tokens, best fit, crop the rest.

    Returns (document, tokens taken) of each placement in row order, and where each row's placements begin (with
    the end appended). Rows are made while the documents left hold a full row; the rest are not used.
    """
    order = np.argsort(lengths, kind="stable").tolist()  # ascending, ties in file order
    sizes = lengths[order].tolist()
    left = sum(sizes)
    docs, takes, row_starts = [], [], [0]
    while left >= row_len:  # so room > 0 always leaves a document to take
        room = row_len
        while room:
            at = bisect.bisect_right(sizes, room) - 1  # the longest that fits whole
            take = sizes[at] if at >= 0 else room
            at = max(at, 0)  # none fits: crop the shortest
            docs.append(order.pop(at))
            left -= sizes.pop(at)
            takes.append(take)
            room -= take
        row_starts.append(len(docs))
    return np.array(docs, dtype=np.int64), np.array(takes, dtype=np.int64), np.array(row_starts, dtype=np.int64)


class Block(NamedTuple):
    """One block's documents and their packing (offsets are from the block's start)."""

    index: int
    start: int  # offset of the block in the split
    tokens: np.ndarray  # the block's tokens, and past its end as far as its last document is kept
    begins: np.ndarray  # offset of each document (its EOT)
    lengths: np.ndarray  # tokens of each document, as cropped to doc_cap
    docs: np.ndarray  # best_fit's placements: document,
    takes: np.ndarray  # tokens taken,
    row_starts: np.ndarray  # and each row's first placement


class AlignedRows(PackedWindows):
    """(seq_len + 1)-token rows of one split, each starting at a document start, read like PackedWindows' windows."""

    def __init__(
        self,
        directory,
        split: str,
        seq_len: int,
        verify_checksums: bool = True,
        max_doc_tokens: int | None = None,
    ):
        """
        Args:
            directory, split, seq_len, verify_checksums: as PackedWindows.
            max_doc_tokens: Crop every document to this many tokens (its EOT included) even where a row could hold
                more; None: to seq_len + 1.
        """
        super().__init__(directory, split, seq_len, verify_checksums)
        self.row_len = seq_len + 1
        self.doc_cap = min(self.row_len, max_doc_tokens or self.row_len)
        self.block_tokens = BLOCK_ROWS * self.row_len
        self._cached: Block | None = None
        counts, self.left_over_tokens = [], 0
        for index in range((self.tokens + self.block_tokens - 1) // self.block_tokens):
            block = self._block(index)
            counts.append(len(block.row_starts) - 1)
            self.left_over_tokens += int(block.lengths.sum() - block.lengths[block.docs].sum())
        self.counts = np.array(counts, dtype=np.uint16)  # rows of each block (at most BLOCK_ROWS + 1)
        self.first_rows = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        self.used_tokens = len(self) * self.row_len
        self.cropped_tokens = self.tokens - self.used_tokens - self.left_over_tokens
        if not len(self):
            raise UserError(
                f"'{split}' split of {self.directory} packs into no row of seq_len + 1 = {self.row_len} tokens; "
                "prepare more data, or use data.packing: stream"
            )

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_cached": None, "first_rows": None}  # rebuilt from the counts

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.first_rows = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.first_rows[-1])

    def _block(self, block: int) -> Block:
        """The packing of one block; the last one read is cached."""
        if self._cached is not None and self._cached.index == block:
            return self._cached
        start = block * self.block_tokens
        stop = min(start + self.block_tokens, self.tokens)
        tokens = self.span(start, min(stop + self.doc_cap, self.tokens))  # the last document, as far as kept
        eots = np.flatnonzero(tokens == EOT)
        begins = eots[eots < stop - start]
        ends = np.append(eots[1:], len(tokens))[: len(begins)]
        lengths = np.minimum(ends - begins, self.doc_cap)
        self._cached = Block(block, start, tokens, begins, lengths, *best_fit(lengths, self.row_len))
        return self._cached

    def _locate(self, index: int) -> tuple[Block, slice]:
        """The block of row `index` and the slice of its placements."""
        block = self._block(int(np.searchsorted(self.first_rows, index, side="right")) - 1)
        row = index - self.first_rows[block.index]
        return block, slice(block.row_starts[row], block.row_starts[row + 1])

    def documents(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(offset in the split, tokens taken) of each document in row `index`, in row order."""
        block, placed = self._locate(index)
        return block.start + block.begins[block.docs[placed]], block.takes[placed]

    def window(self, index: int) -> np.ndarray:
        """Row `index`: its documents' first tokens, concatenated (seq_len + 1 tokens)."""
        block, placed = self._locate(index)
        begins = block.begins[block.docs[placed]]
        return np.concatenate([block.tokens[b : b + t] for b, t in zip(begins, block.takes[placed])])

    def stats(self) -> dict[str, int]:
        """Tokens of the split, and how many rows hold, were cropped off documents, or were left over in blocks."""
        return {
            "tokens": self.tokens,
            "used": self.used_tokens,
            "cropped": self.cropped_tokens,
            "left_over": self.left_over_tokens,
        }
