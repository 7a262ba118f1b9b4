# Writes ${OUT}: `#define REGMESH_COMMIT "<short hash>[-dirty]"`, run on every
# build so `regmesh version` and regmesh_build_info name the code they came
# from. Outside a git checkout (a release tarball) REGMESH_COMMIT_OVERRIDE or
# "unknown". The file is rewritten only when it changes, so nothing rebuilds
# needlessly.
set(commit "${COMMIT_OVERRIDE}")
if(commit STREQUAL "")
  execute_process(COMMAND git -C "${SRC}" rev-parse --short=12 HEAD
                  OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE rc ERROR_QUIET)
  if(rc EQUAL 0)
    execute_process(COMMAND git -C "${SRC}" diff --quiet HEAD --
                    RESULT_VARIABLE dirty ERROR_QUIET)
    if(NOT dirty EQUAL 0)
      set(commit "${commit}-dirty")
    endif()
  else()
    set(commit "unknown")
  endif()
endif()
set(text "#define REGMESH_COMMIT \"${commit}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
