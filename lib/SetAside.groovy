import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.ConcurrentLinkedQueue

/**
 * Fault isolation per sample (docs/pipeline.md, "When a sample fails").
 *
 * Every process of the pipeline takes its errorStrategy from `strategy` below:
 *   - a task killed for memory or time (exit 137, 139, 140, 143) is retried with more
 *     (conf/base.config sizes the retries), up to its maxRetries;
 *   - a task of one sample that fails on that sample's data (the cellassign-nf command's own
 *     failures: exit 2 bad input, 3 diverged fit, 1 unexpected error), or is still killed after
 *     its retries, sets the sample aside: the task's error is ignored, so the sample's later steps
 *     do not run and every other sample goes on; the reason is the command's one-line error;
 *   - any other failure, and any failure of a task over the whole run (the cohort model, the
 *     cohort table, MultiQC), stops the run as before ('finish': running tasks end first).
 * The run then exits non-zero (workflow.failOnIgnore, unless --allow_failed_samples).
 */
class SetAside {
    static final List<Integer> KILLED = [137, 139, 140, 143]
    static final List<Integer> DATA = [1, 2, 3]
    // the columns of pipeline_info/samples.tsv, in order
    static final List<String> COLUMNS = ['sample', 'status', 'step', 'reason', 'doublets', 'qc_warnings', 'model_warnings']
    // a sample's status in that table
    static final String DONE = 'annotated'
    static final String SET_ASIDE = 'set aside'
    static final String NOT_FINISHED = 'not finished'

    // [sample, step, reason] of every sample set aside in this run
    private static final Queue<Map> RECORDS = new ConcurrentLinkedQueue<>()

    /** The errorStrategy of a task; `meta` is its sample's (null or meta.cohort: a task over the run). */
    static String strategy(task, Map meta) {
        int status = task.exitStatus instanceof Integer ? task.exitStatus : -1
        boolean killed = status in KILLED
        // task.get: the directive as set (task.maxRetries would ask this strategy again)
        if (killed && task.attempt <= ((task.get('maxRetries') ?: 0) as int)) {
            return 'retry'
        }
        if (meta == null || meta.cohort || !(killed || status in DATA)) {
            return 'finish'
        }
        String step = task.process.toString().tokenize(':')[-1].toLowerCase()
        RECORDS.add([sample: meta.id.toString(), step: step, reason: reason(task.workDir as Path, status, killed, task.attempt as int)])
        return 'ignore'
    }

    /** The command's one-line error (its last `error: ...` line on stderr), or what killed the task. */
    static String reason(Path workDir, int status, boolean killed, int attempts) {
        if (killed) {
            return "killed (exit status ${status}: out of memory or past a time limit) after ${attempts} attempt${attempts == 1 ? '' : 's'}; " +
                "raise --max_memory / --max_time or the step's resources (conf/base.config)"
        }
        Path err = workDir?.resolve('.command.err')
        String line = null
        try {
            if (err != null && Files.exists(err)) {
                def errors = err.readLines().findAll { it.startsWith('error: ') }
                line = errors ? errors[-1].substring('error: '.length()).trim() : null
            }
        } catch (IOException ignored) {
            line = null
        }
        return line ?: "exit status ${status}; see ${workDir}/.command.err"
    }

    /** Every sample set aside so far: [sample, step, reason] maps, in the order they failed. */
    static List<Map> records() {
        return RECORDS.toList()
    }
}
