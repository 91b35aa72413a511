/*  fuzz_decode.c - libFuzzer target for every decoder of the model.

    The first input byte picks the codec (the envelope or a request/reply
    of any operation); the rest is the frame. Whatever the bytes, decoding
    must not crash, leak or read out of bounds; a frame that decodes must
    re-encode, and the re-encoding must decode to the same encoding again.
*/
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sh_codec.h"

#define FUZZ_MSG_MAX (1 << 17) /* larger than any message struct */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const sh_codec_t *s_pick(uint8_t selector)
{
    size_t count = 1 + 2 * sh_op_count;
    size_t index = selector % count;
    if (index == 0)
        return &sh_envelope_codec;
    const sh_op_info_t *op = &sh_op_table[(index - 1) / 2];
    return (index - 1) % 2 ? op->reply : op->request;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const sh_codec_t *codec = s_pick(data[0]);
    static _Alignas(max_align_t) char msg[FUZZ_MSG_MAX], again[FUZZ_MSG_MAX];
    assert(codec->size <= sizeof msg);
    if (sh_codec_decode(codec, msg, data + 1, size - 1) != 0)
        return 0;
    msgpack_sbuffer first, second;
    msgpack_sbuffer_init(&first);
    msgpack_sbuffer_init(&second);
    if (sh_codec_encode(codec, msg, &first) != 0)
        abort();
    if (sh_codec_decode(codec, again, first.data, first.size) != 0)
        abort();
    if (sh_codec_encode(codec, again, &second) != 0 || first.size != second.size ||
        memcmp(first.data, second.data, first.size) != 0)
        abort();
    msgpack_sbuffer_destroy(&first);
    msgpack_sbuffer_destroy(&second);
    return 0;
}
