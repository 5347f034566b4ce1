/* Built when BLIS is not available: the backend is simply absent. */
#include "../../lib/internal.h"

const peft_backend *peft__backend_blis(void) { return NULL; }
