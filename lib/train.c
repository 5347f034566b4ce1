/* The training entry points: step, split step, eval. */
#include <math.h>
#include <string.h>

#include "model.h"

static int check_result(const peft_step_result *res)
{
    if (res && (res->version == 0 || res->version > PEFT_STEP_RESULT_VERSION))
        return peft__fail(PEFT_EINVAL, "step result: unknown version %u", res ? res->version : 0);
    return PEFT_OK;
}

static void reset_result(peft_step_result *res)
{
    if (!res)
        return;
    uint32_t v = res->version;
    memset(res, 0, sizeof *res);
    res->version = v;
}

int peft_forward_backward(peft_model *m, const peft_batch *batch, peft_step_result *res)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_forward_backward: model is NULL");
    int code = check_result(res);
    if (code)
        return code;
    reset_result(res);
    double loss;
    uint64_t tokens;
    if ((code = peft__run(m, batch, 1, &loss, &tokens)))
        return code;
    m->accum_tokens += (double)tokens;
    if (res) {
        res->loss = tokens ? loss / (double)tokens : 0.0;
        res->tokens = tokens;
        res->step = m->step;
    }
    if (!isfinite(loss)) {
        /* drop this micro-batch's contribution by zeroing the whole accumulation */
        memset(m->lora->grads, 0, m->lora->n_params * sizeof(float));
        m->accum_tokens = 0;
        m->micro = 0;
        return peft__fail(PEFT_ENUMERIC, "loss is not finite; gradients discarded, parameters unchanged");
    }
    return PEFT_OK;
}

int peft_apply_update(peft_model *m, double token_count, peft_step_result *res)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_apply_update: model is NULL");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_apply_update: no adapter attached");
    if (!(token_count >= 0) || !isfinite(token_count))
        return peft__fail(PEFT_EINVAL, "peft_apply_update: bad token count");
    int code = check_result(res);
    if (code)
        return code;
    double count = token_count > 0 ? token_count : m->accum_tokens;
    code = peft__opt_apply(m, count, res);
    m->accum_tokens = 0;
    m->micro = 0;
    return code;
}

int peft_zero_grad(peft_model *m)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_zero_grad: model is NULL");
    if (m->lora)
        memset(m->lora->grads, 0, m->lora->n_params * sizeof(float));
    m->accum_tokens = 0;
    m->micro = 0;
    return PEFT_OK;
}

int peft_set_grad_ready(peft_model *m, peft_grad_ready_fn fn, void *user)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_set_grad_ready: model is NULL");
    m->grad_ready = fn;
    m->grad_ready_user = fn ? user : NULL;
    return PEFT_OK;
}

int peft_step(peft_model *m, const peft_batch *batch, peft_step_result *res)
{
    int code = peft_forward_backward(m, batch, res);
    if (code)
        return code;
    if (++m->micro < m->accum_steps)
        return PEFT_OK;
    double loss = res ? res->loss : 0;
    uint64_t tokens = res ? res->tokens : 0;
    code = peft_apply_update(m, 0, res);
    if (res) {
        res->loss = loss;
        res->tokens = tokens;
    }
    return code;
}

int peft_eval(peft_model *m, const peft_batch *batch, peft_eval_result *res)
{
    if (!m || !res)
        return peft__fail(PEFT_EINVAL, "peft_eval: NULL argument");
    if (res->version == 0 || res->version > PEFT_EVAL_RESULT_VERSION)
        return peft__fail(PEFT_EINVAL, "peft_eval: unknown result version %u", res->version);
    double loss;
    uint64_t tokens;
    int code = peft__run(m, batch, 0, &loss, &tokens);
    if (code)
        return code;
    res->loss_sum = loss;
    res->tokens = tokens;
    return PEFT_OK;
}
