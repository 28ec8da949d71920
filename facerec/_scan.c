/* facerec._scan: the face index's integer scan and its encoder, in C.
 *
 * Built by the project's own install (setup.py; `pip install .` or `make venv`); where it
 * cannot be built, facerec._kernels falls back to numpy, which gives the same answers.
 * facerec/_kernels.py documents the layout and the arithmetic; in short:
 *
 *   head   int8, blocks of BLOCK_ROWS faces: [block][dimension pair][row][2], the first
 *          HEAD_DIMS coded dimensions (4096 bytes a block), read for every face;
 *   tail   int8, [row][TAIL_DIMS], the other coded dimensions, read only for a face whose
 *          head sum is within the threshold (a sum of squares only grows).
 *
 * A candidate is a row whose sum over all CODE_DIMS squared differences is <= the query's
 * threshold: exactly the rows the numpy reference returns, in the same order (by block,
 * then query, then row). Every sum fits an int32 (96 * 254^2 < 2^31), and int16
 * differences (at most 254) square and pair-add into int32 (`pmaddwd`) without overflow.
 *
 * The AVX2 kernel is chosen at run time when the CPU has AVX2; otherwise a portable C
 * loop with the same integer results. The scan releases the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FACEREC_X86 1
#endif

#define BLOCK_ROWS 64
#define HEAD_DIMS 64
#define TAIL_DIMS 32
#define CODE_DIMS (HEAD_DIMS + TAIL_DIMS)
#define HEAD_PAIRS (HEAD_DIMS / 2)
#define BLOCK_BYTES (BLOCK_ROWS * HEAD_DIMS)
#define ENCODING_DIM 128

/* Head sums of one block for one query into acc[BLOCK_ROWS]; returns the rows (bit r)
 * whose head sum is <= t. */
typedef uint64_t (*head_fn)(const int8_t *blk, const int16_t *q, int32_t t, int32_t *acc);
/* Sum of squared differences over the tail of one row. */
typedef int32_t (*tail_fn)(const int8_t *row, const int16_t *q);

static uint64_t head_portable(const int8_t *blk, const int16_t *q, int32_t t, int32_t *acc)
{
    uint64_t live = 0;
    for (int r = 0; r < BLOCK_ROWS; r++)
        acc[r] = 0;
    for (int p = 0; p < HEAD_PAIRS; p++) {
        const int8_t *base = blk + p * 2 * BLOCK_ROWS;
        int32_t q0 = q[2 * p], q1 = q[2 * p + 1];
        for (int r = 0; r < BLOCK_ROWS; r++) {
            int32_t d0 = base[2 * r] - q0, d1 = base[2 * r + 1] - q1;
            acc[r] += d0 * d0 + d1 * d1;
        }
    }
    for (int r = 0; r < BLOCK_ROWS; r++)
        if (acc[r] <= t)
            live |= (uint64_t)1 << r;
    return live;
}

static int32_t tail_portable(const int8_t *row, const int16_t *q)
{
    int32_t s = 0;
    for (int k = 0; k < TAIL_DIMS; k++) {
        int32_t d = row[k] - q[k];
        s += d * d;
    }
    return s;
}

#ifdef FACEREC_X86
/* 16 bytes = one dimension pair of 8 rows: sign-extend to int16, subtract the query's
 * pair (broadcast as one int32), pmaddwd: 8 int32 partial sums, one per row. */
__attribute__((target("avx2")))
static uint64_t head_avx2(const int8_t *blk, const int16_t *q, int32_t t, int32_t *acc)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0,
            s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    for (int p = 0; p < HEAD_PAIRS; p++) {
        int32_t pair;
        memcpy(&pair, q + 2 * p, sizeof pair);
        const __m256i qv = _mm256_set1_epi32(pair);
        const int8_t *base = blk + p * 2 * BLOCK_ROWS;
#define FACEREC_GROUP(g, s) do { \
        __m256i d = _mm256_sub_epi16( \
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(base + 16 * (g)))), qv); \
        s = _mm256_add_epi32(s, _mm256_madd_epi16(d, d)); \
    } while (0)
        FACEREC_GROUP(0, s0); FACEREC_GROUP(1, s1); FACEREC_GROUP(2, s2);
        FACEREC_GROUP(3, s3); FACEREC_GROUP(4, s4); FACEREC_GROUP(5, s5);
        FACEREC_GROUP(6, s6); FACEREC_GROUP(7, s7);
#undef FACEREC_GROUP
    }
    const __m256i tv = _mm256_set1_epi32(t);
    __m256i sums[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    uint64_t over = 0;
    for (int g = 0; g < 8; g++) {
        _mm256_storeu_si256((__m256i *)(acc + 8 * g), sums[g]);
        uint32_t m = (uint32_t)_mm256_movemask_ps(
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(sums[g], tv)));
        over |= (uint64_t)m << (8 * g);
    }
    return ~over;
}

__attribute__((target("avx2")))
static int32_t tail_avx2(const int8_t *row, const int16_t *q)
{
    __m256i d0 = _mm256_sub_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)row)),
                                  _mm256_loadu_si256((const __m256i *)q));
    __m256i d1 = _mm256_sub_epi16(
        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + 16))),
        _mm256_loadu_si256((const __m256i *)(q + 16)));
    __m256i s = _mm256_add_epi32(_mm256_madd_epi16(d0, d0), _mm256_madd_epi16(d1, d1));
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
}
#endif

static head_fn head_sums = head_portable;
static tail_fn tail_sum = tail_portable;
static const char *kernel_name = "portable";

static int check_size(Py_buffer *b, Py_ssize_t need, const char *what)
{
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %zd needed", what, b->len, need);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(head, tail, row_lo, row_hi, queries, thresholds, out_rows, out_cols) -> int\n\n"
"Rows in [row_lo, row_hi) of one chunk whose code distance to a query is within its\n"
"threshold, written as (row, query) pairs to out_rows / out_cols (int64) while they have\n"
"room; returns how many there are. queries: int16 [n][96]; thresholds: int32 [n].");

static PyObject *scan(PyObject *self, PyObject *args)
{
    Py_buffer head, tail, queries, thr, out_rows, out_cols;
    Py_ssize_t row_lo, row_hi;
    if (!PyArg_ParseTuple(args, "y*y*nny*y*w*w*", &head, &tail, &row_lo, &row_hi, &queries,
                          &thr, &out_rows, &out_cols))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nq = thr.len / (Py_ssize_t)sizeof(int32_t);
    Py_ssize_t room = out_rows.len / (Py_ssize_t)sizeof(int64_t);
    if (row_lo < 0 || row_hi < row_lo) {
        PyErr_SetString(PyExc_ValueError, "rows: 0 <= row_lo <= row_hi");
        goto done;
    }
    Py_ssize_t b_lo = row_lo / BLOCK_ROWS, b_hi = (row_hi + BLOCK_ROWS - 1) / BLOCK_ROWS;
    if (check_size(&head, b_hi * BLOCK_BYTES, "head") ||
        check_size(&tail, row_hi * TAIL_DIMS, "tail") ||
        check_size(&queries, nq * CODE_DIMS * (Py_ssize_t)sizeof(int16_t), "queries") ||
        check_size(&out_cols, room * (Py_ssize_t)sizeof(int64_t), "out_cols"))
        goto done;
    const int8_t *h = head.buf, *tl = tail.buf;
    const int16_t *qs = queries.buf;
    const int32_t *ts = thr.buf;
    int64_t *rows = out_rows.buf, *cols = out_cols.buf;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    int32_t acc[BLOCK_ROWS];
    for (Py_ssize_t b = b_lo; b < b_hi; b++) {
        const int8_t *blk = h + b * BLOCK_BYTES;
        for (Py_ssize_t c = 0; c < nq; c++) {
            const int16_t *q = qs + c * CODE_DIMS;
            uint64_t live = head_sums(blk, q, ts[c], acc);
            while (live) {
                int r = __builtin_ctzll(live);
                live &= live - 1;
                Py_ssize_t row = b * BLOCK_ROWS + r;
                if (row < row_lo || row >= row_hi)
                    continue;
                if (acc[r] + tail_sum(tl + row * TAIL_DIMS, q + HEAD_DIMS) <= ts[c]) {
                    if (count < room) {
                        rows[count] = row;
                        cols[count] = c;
                    }
                    count++;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(count);
done:
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&queries);
    PyBuffer_Release(&thr);
    PyBuffer_Release(&out_rows);
    PyBuffer_Release(&out_cols);
    return result;
}

PyDoc_STRVAR(encode_doc,
"encode(vectors, dims, scale, code_max, limit, codes, errors)\n\n"
"int8 codes of the kept dimensions `dims` (int64 [96]) of float32 rows `vectors`\n"
"([n][128]), c = rint(x * scale) clipped to +-code_max, into codes ([n][96]); into errors\n"
"(float64 [n]) an upper bound of |x - c/scale| over those dimensions, or inf for a row\n"
"with a value that is not finite or of magnitude >= limit (its codes are then zeros).");

static PyObject *encode(PyObject *self, PyObject *args)
{
    Py_buffer vectors, dims, codes, errors;
    float scale, limit;
    int code_max;
    if (!PyArg_ParseTuple(args, "y*y*fifw*w*", &vectors, &dims, &scale, &code_max, &limit,
                          &codes, &errors))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = vectors.len / (Py_ssize_t)(ENCODING_DIM * sizeof(float));
    if (dims.len != CODE_DIMS * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "dims: 96 int64");
        goto done;
    }
    if (check_size(&codes, n * CODE_DIMS, "codes") ||
        check_size(&errors, n * (Py_ssize_t)sizeof(double), "errors"))
        goto done;
    const int64_t *dk = dims.buf;
    for (int k = 0; k < CODE_DIMS; k++)
        if (dk[k] < 0 || dk[k] >= ENCODING_DIM) {
            PyErr_SetString(PyExc_ValueError, "dims: each in 0..127");
            goto done;
        }
    const float *v = vectors.buf;
    int8_t *out = codes.buf;
    double *err = errors.buf;
    /* Every float operation here is exact except the float64 sum of squares: x * scale
     * (a power of two), rint, c * inv, and x - c * inv (Sterbenz). Compiled without FMA
     * contraction (setup.py), so the codes equal numpy's, bit for bit. */
    const float inv = 1.0f / scale, cmax = (float)code_max;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *x = v + i * ENCODING_DIM;
        int8_t *c8 = out + i * CODE_DIMS;
        int odd = 0;
        for (int k = 0; k < CODE_DIMS; k++)
            if (!(fabsf(x[dk[k]]) < limit)) /* also NaN */
                odd = 1;
        double total = 0.0;
        for (int k = 0; k < CODE_DIMS; k++) {
            float xv = odd ? 0.0f : x[dk[k]];
            float c = rintf(xv * scale);
            c = c < -cmax ? -cmax : (c > cmax ? cmax : c);
            c8[k] = (int8_t)c;
            double d = (double)(xv - c * inv);
            total += d * d;
        }
        err[i] = odd ? INFINITY : sqrt(total * (1 + 1e-5));
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&vectors);
    PyBuffer_Release(&dims);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&errors);
    return result;
}

PyDoc_STRVAR(pack_doc,
"pack(codes, head, tail, row)\n\n"
"Write rows of codes (int8 [n][96], row-major) into one chunk's head (blocks) and tail,\n"
"as its rows row .. row + n - 1.");

static PyObject *pack(PyObject *self, PyObject *args)
{
    Py_buffer codes, head, tail;
    Py_ssize_t row;
    if (!PyArg_ParseTuple(args, "y*w*w*n", &codes, &head, &tail, &row))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = codes.len / CODE_DIMS;
    if (row < 0 || codes.len % CODE_DIMS) {
        PyErr_SetString(PyExc_ValueError, "pack: whole rows of 96 codes, row >= 0");
        goto done;
    }
    Py_ssize_t blocks = (row + n + BLOCK_ROWS - 1) / BLOCK_ROWS;
    if (check_size(&head, blocks * BLOCK_BYTES, "head") ||
        check_size(&tail, (row + n) * TAIL_DIMS, "tail"))
        goto done;
    const int8_t *src = codes.buf;
    int8_t *h = head.buf, *t = tail.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t r = row + i;
        const int8_t *c = src + i * CODE_DIMS;
        int8_t *lane = h + (r / BLOCK_ROWS) * BLOCK_BYTES + (r % BLOCK_ROWS) * 2;
        for (int p = 0; p < HEAD_PAIRS; p++) {
            lane[p * 2 * BLOCK_ROWS] = c[2 * p];
            lane[p * 2 * BLOCK_ROWS + 1] = c[2 * p + 1];
        }
        memcpy(t + r * TAIL_DIMS, c + HEAD_DIMS, TAIL_DIMS);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    return result;
}

static PyObject *kernel(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(kernel_name);
}

static int have_avx2(void)
{
#ifdef FACEREC_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static PyObject *select_kernel(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    if (strcmp(name, "portable") == 0) {
        head_sums = head_portable;
        tail_sum = tail_portable;
        kernel_name = "portable";
    }
#ifdef FACEREC_X86
    else if (strcmp(name, "avx2") == 0 && have_avx2()) {
        head_sums = head_avx2;
        tail_sum = tail_avx2;
        kernel_name = "avx2";
    }
#endif
    else {
        PyErr_Format(PyExc_ValueError, "kernel %R: \"portable\", or \"avx2\" on a CPU with AVX2",
                     arg);
        return NULL;
    }
    return PyUnicode_FromString(kernel_name);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"encode", encode, METH_VARARGS, encode_doc},
    {"pack", pack, METH_VARARGS, pack_doc},
    {"kernel", kernel, METH_NOARGS, "The scan in use: \"avx2\" or \"portable\"."},
    {"select", select_kernel, METH_O,
     "select(name): use the \"avx2\" or the \"portable\" scan (the same answers); "
     "returns it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "facerec._scan",
    "The face index's integer scan and encoder (see facerec/_kernels.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyModule_AddIntConstant(m, "BLOCK_ROWS", BLOCK_ROWS);
    PyModule_AddIntConstant(m, "HEAD_DIMS", HEAD_DIMS);
    PyModule_AddIntConstant(m, "TAIL_DIMS", TAIL_DIMS);
#ifdef FACEREC_X86
    if (have_avx2()) {
        head_sums = head_avx2;
        tail_sum = tail_avx2;
        kernel_name = "avx2";
    }
#endif
    return m;
}
