// SPDX-License-Identifier: Apache-2.0
// The MPI hello world users run to check an allocation: each rank prints its rank, the number
// of ranks and its host, and rank 0 checks that an allreduce over all ranks adds up.
#include <mpi.h>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0, len = 0;
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(host, &len);
  int sum = 0;
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  std::printf("rank %d of %d on %s\n", rank, size, host);
  if (rank == 0)
    std::printf("sum of ranks %d\n", sum);
  MPI_Finalize();
  return sum == size * (size - 1) / 2 ? 0 : 1;
}
