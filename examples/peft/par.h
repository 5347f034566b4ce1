/* Data-parallel training across processes for `peft train` (MPI, when built with it).
   The library knows nothing of MPI: this host code sums the adapter gradients of all
   ranks and keeps them in step. Without MPI every call is the one-process identity. */
#ifndef PEFT_PAR_H
#define PEFT_PAR_H

#include <stddef.h>

#include <peft/peft.h>

/* Start MPI if this process was launched by mpirun/srun (its environment says so);
   returns -1 with a message when launched with several ranks by a peft built without
   MPI, or when MPI fails to start. */
int par_init(void);
void par_finalize(void);
int par_rank(void);
int par_size(void);
/* Sum over ranks, in place. */
int par_sum_floats(float *buf, size_t n);
int par_sum_doubles(double *buf, size_t n);
/* Rank 0's buffer to every rank. */
int par_bcast_floats(float *buf, size_t n);
/* Overlap the gradient all-reduce with the backward pass: par_overlap_begin before the
   last micro-batch of a step has the library report each range of the gradient buffer as
   soon as it is final (peft_set_grad_ready); its sum over ranks starts at once
   (MPI_Iallreduce on a copy). par_overlap_finish waits for them all and writes the sums
   into the gradient buffer. Every rank must run the same number of backward passes. */
int par_overlap_begin(peft_model *m);
int par_overlap_finish(peft_model *m);
/* Stop every rank: a failure on one rank ends the job (exit code 1). */
void par_abort(void);
/* Seconds spent in the collectives above since par_init (or par_comm_reset). */
double par_comm_seconds(void);
/* Start counting comm_seconds afresh (at the training loop, so that the broadcast of the initial
   parameters and the first evaluation, which wait for the slowest rank to load, stay out) */
void par_comm_reset(void);

#endif
