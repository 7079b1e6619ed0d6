"""R's default random number generator, for the few places where R's output depends on it.

``impute::impute.knn`` calls ``set.seed(362436069)`` and ``sample(seq(p), 2)`` to start its two-means
gene clustering when there are more than ``maxp`` genes; matching its output needs the same draws.
This is R's Mersenne-Twister (``RNGkind("Mersenne-Twister", sample.kind = "Rejection")``, the default
since R 3.6.0) as implemented in ``src/main/RNG.c``: ``set.seed`` scrambling (``seed = 69069 * seed + 1``),
``MT_genrand`` with tempering and ``fixup``, and ``R_unif_index`` by rejection sampling of ``rbits``.
"""

from __future__ import annotations

import math

_N, _M = 624, 397
_UPPER, _LOWER, _MATRIX_A = 0x80000000, 0x7FFFFFFF, 0x9908B0DF
_I2_32M1 = 2.328306437080797e-10  # 1 / (2^32 - 1)


class RRandom:
    """``set.seed(seed)`` followed by ``runif``/``sample`` draws identical to R's.

    Examples
    --------
    >>> rng = RRandom(42)
    >>> round(rng.unif_rand(), 6)
    0.914806
    >>> RRandom(123).sample(10, 10)
    [3, 10, 2, 8, 6, 9, 1, 7, 5, 4]
    """

    def __init__(self, seed: int):
        seed &= 0xFFFFFFFF
        for _ in range(50):  # initial scrambling
            seed = (69069 * seed + 1) & 0xFFFFFFFF
        state = []
        for _ in range(_N + 1):
            seed = (69069 * seed + 1) & 0xFFFFFFFF
            state.append(seed)
        self.mt = state[1:]  # state[0] is dummy[0] (mti), set to N by FixupSeeds
        self.mti = _N

    def _genrand(self) -> float:
        mt = self.mt
        if self.mti >= _N:
            for kk in range(_N - _M):
                y = (mt[kk] & _UPPER) | (mt[kk + 1] & _LOWER)
                mt[kk] = mt[kk + _M] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
            for kk in range(_N - _M, _N - 1):
                y = (mt[kk] & _UPPER) | (mt[kk + 1] & _LOWER)
                mt[kk] = mt[kk + (_M - _N)] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
            y = (mt[_N - 1] & _UPPER) | (mt[0] & _LOWER)
            mt[_N - 1] = mt[_M - 1] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
            self.mti = 0
        y = mt[self.mti]
        self.mti += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y * 2.3283064365386963e-10

    def unif_rand(self) -> float:
        """``runif(1)``: one draw in (0, 1)."""
        value = self._genrand()
        if value <= 0.0:
            return 0.5 * _I2_32M1
        if 1.0 - value <= 0.0:
            return 1.0 - 0.5 * _I2_32M1
        return value

    def _rbits(self, bits: int) -> int:
        v = 0
        for _ in range(0, bits + 1, 16):
            v1 = int(math.floor(self.unif_rand() * 65536))
            v = 65536 * v + v1
        return v & ((1 << bits) - 1)

    def unif_index(self, dn: int) -> int:
        """``R_unif_index(dn)``: uniform integer in ``[0, dn)`` by rejection sampling."""
        if dn <= 0:
            return 0
        bits = math.ceil(math.log2(dn))
        while True:
            dv = self._rbits(bits)
            if dn > dv:
                return dv

    def sample(self, n: int, size: int) -> list[int]:
        """``sample.int(n, size)`` without replacement (1-based values, as R returns)."""
        x = list(range(n))
        out = []
        for _ in range(size):
            j = self.unif_index(n)
            out.append(x[j] + 1)
            n -= 1
            x[j] = x[n]
        return out
