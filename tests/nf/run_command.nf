/*
 * Calls runCommand of the initialisation subworkflow (the docker container check reads the
 * daemon's answers through it) --times times on a command that writes to stdout and to stderr, and
 * prints a WRONG line for each call that does not return [3, the last line the command wrote],
 * then DONE <calls> <wrong calls> (tests/test_run_command.py).
 */

include { runCommand } from '../../subworkflows/local/pipeline_initialisation/main.nf'

workflow {
    def command = ['bash', '-c', 'for i in $(seq 200); do echo "out $i"; echo "err $i" >&2; done; echo "last line" >&2; exit 3']
    def wrong = 0
    (params.times as int).times {
        def (rc, last) = runCommand(command, 30_000)
        if (rc != 3 || last != 'last line') {
            wrong++
            println "WRONG\t${rc}\t${last}"
        }
    }
    println "DONE\t${params.times}\t${wrong}"
}
